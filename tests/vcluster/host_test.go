package vcluster

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/harikube/harikube/pkg/vcluster"
	"github.com/harikube/harikube/tests/testserver"
)

// vclusterName is the release name, the host Service's name and
// VCLUSTER_NAME; the host namespace has the same name, as in the manifest.
const vclusterName = "kine"

// hostCluster is a harikube server playing the host cluster of a vCluster:
// the namespace, the vCluster's Service (annotated with the service CIDR as
// the syncer annotates it before starting the control plane) and a service
// account allowed to read Services, as the chart's Role allows the syncer.
type hostCluster struct {
	srv *testserver.Server
	// run is what the pod mounts at /var/run (= /run): the service
	// account's token, ca.crt and namespace under
	// secrets/kubernetes.io/serviceaccount.
	run string
}

// newHostCluster starts the host; an empty annotation leaves the Service
// without one.
func newHostCluster(t *testing.T, hostServiceCIDR, annotation string) *hostCluster {
	t.Helper()
	srv := testserver.Start(t, "--service-cidr="+hostServiceCIDR)
	ctx := context.Background()
	c := srv.Client
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: vclusterName}}, metav1.CreateOptions{})
	must(err)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: vclusterName, Namespace: vclusterName},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443}}},
	}
	if annotation != "" {
		svc.Annotations = map[string]string{vcluster.ServiceCIDRAnnotation: annotation}
	}
	_, err = c.CoreV1().Services(vclusterName).Create(ctx, svc, metav1.CreateOptions{})
	must(err)
	sa := "vc-" + vclusterName
	_, err = c.CoreV1().ServiceAccounts(vclusterName).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	must(err)
	_, err = c.RbacV1().Roles(vclusterName).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{})
	must(err)
	_, err = c.RbacV1().RoleBindings(vclusterName).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: sa},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: vclusterName}},
	}, metav1.CreateOptions{})
	must(err)
	tok, err := c.CoreV1().ServiceAccounts(vclusterName).CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	must(err)

	ca := srv.Config.CAData
	if len(ca) == 0 {
		ca, err = os.ReadFile(srv.Config.CAFile)
		must(err)
	}
	h := &hostCluster{srv: srv, run: t.TempDir()}
	dir := filepath.Join(h.run, "secrets", "kubernetes.io", "serviceaccount")
	must(os.MkdirAll(dir, 0o755))
	must(os.WriteFile(filepath.Join(dir, "token"), []byte(tok.Status.Token), 0o600))
	must(os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o644))
	must(os.WriteFile(filepath.Join(dir, "namespace"), []byte(vclusterName), 0o644))
	return h
}

// podArgs runs args the way they run in the vCluster pod: in a private
// mount namespace where /var/run holds the service account files (never
// the machine's real /run), with the in-cluster environment client-go
// reads and the chart's VCLUSTER_NAME.
func (h *hostCluster) podArgs(args []string) []string {
	return append([]string{"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$0" /run && exec "$@"`, h.run}, args...)
}

func (h *hostCluster) podEnv() []string {
	return []string{
		"KUBERNETES_SERVICE_HOST=127.0.0.1",
		"KUBERNETES_SERVICE_PORT=" + strconv.Itoa(h.srv.Port),
		vcluster.NameEnv + "=" + vclusterName,
	}
}
