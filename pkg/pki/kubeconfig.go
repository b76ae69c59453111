package pki

import (
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigName names the cluster and context, as in k3s, so scripts
// written for k3s kubeconfigs keep working.
const kubeconfigName = "default"

// WriteKubeconfig writes a kubeconfig (mode 0600, atomically) for server URL with the CA and a client cert/key embedded as data.
// Embedding makes the file self-contained, so it stays valid when copied to
// another machine or when the TLS directory is not readable by its user.
func WriteKubeconfig(path, serverURL, caFile, certFile, keyFile, user string) error {
	if user == "" {
		user = kubeconfigName
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: read CA: %w", path, err)
	}
	crt, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: read client certificate: %w", path, err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: read client key: %w", path, err)
	}

	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigName] = &clientcmdapi.Cluster{
		Server:                   serverURL,
		CertificateAuthorityData: ca,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: crt,
		ClientKeyData:         key,
	}
	cfg.Contexts[kubeconfigName] = &clientcmdapi.Context{
		Cluster:  kubeconfigName,
		AuthInfo: user,
	}
	cfg.CurrentContext = kubeconfigName

	// clientcmd.WriteToFile writes in place, which could leave a truncated
	// file behind; serialising here lets us replace it atomically.
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: encode: %w", path, err)
	}
	return writeFileAtomic(path, data, keyMode)
}
