package vcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ServiceCIDRAnnotation is where the syncer records the host cluster's
// service CIDR on its own host Service (vCluster pkg/util/servicecidr,
// v0.20 and later), before it starts the control plane.
const ServiceCIDRAnnotation = "vcluster.loft.sh/service-cidr"

// NameEnv is the variable vCluster's chart sets to the release name, which
// is also the name of the vCluster's Service on the host.
const NameEnv = "VCLUSTER_NAME"

// podNamespaceFile is the pod's namespace, next to the service account
// token client-go's in-cluster config reads.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Host is the host cluster as seen from the vCluster pod: a client with
// the pod's service account and the vCluster's Service there.
type Host struct {
	Client    kubernetes.Interface
	Namespace string
	Service   string
}

// PodHost builds Host from the pod's environment: client-go's in-cluster
// config (KUBERNETES_SERVICE_HOST/PORT and the service account token),
// the namespace file next to the token, and VCLUSTER_NAME.
func PodHost() (*Host, error) {
	const hint = "; run it in the vCluster pod or pass --service-cidr with the host cluster's service CIDR"
	name := os.Getenv(NameEnv)
	if name == "" {
		return nil, fmt.Errorf("--vcluster: %s is not set (vCluster's chart sets it to the release name)%s", NameEnv, hint)
	}
	ns, err := os.ReadFile(podNamespaceFile)
	if err != nil {
		return nil, fmt.Errorf("--vcluster: read the pod's namespace: %w%s", err, hint)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("--vcluster: host cluster client: %w%s", err, hint)
	}
	cfg.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("--vcluster: host cluster client: %w", err)
	}
	return &Host{Client: client, Namespace: strings.TrimSpace(string(ns)), Service: name}, nil
}

// ServiceCIDR returns the host service CIDR the syncer recorded (one CIDR, or
// "v4,v6" when dual-stack). The syncer annotates its Service before it starts
// the control plane, so the wait only covers a slow host API; a Service that
// does not exist, or an annotation that never appears (vCluster was given
// its own serviceCIDR), ends in an error saying what to set.
func (h *Host) ServiceCIDR(ctx context.Context, timeout time.Duration) (string, error) {
	where := fmt.Sprintf("annotation %s of Service %s/%s on the host cluster", ServiceCIDRAnnotation, h.Namespace, h.Service)
	var value string
	var last, fatal error
	var waiting bool
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		svc, err := h.Client.CoreV1().Services(h.Namespace).Get(ctx, h.Service, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			fatal = fmt.Errorf("--vcluster: Service %s/%s does not exist on the host cluster (%s names the vCluster's Service); pass --service-cidr with the host cluster's service CIDR", h.Namespace, h.Service, NameEnv)
			return false, fatal
		case err != nil:
			last = err
			return false, nil
		}
		value = svc.Annotations[ServiceCIDRAnnotation]
		if value == "" {
			if !waiting {
				logrus.Infof("Waiting up to %s for the %s", timeout, where)
				waiting = true
			}
			last = errors.New("annotation not set")
		}
		return value != "", nil
	})
	if err != nil {
		if fatal != nil {
			return "", fatal
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("--vcluster: no service CIDR in the %s after %s (last: %v); pass --service-cidr with the host cluster's service CIDR", where, timeout, last)
	}
	if err := ValidateServiceCIDR(value); err != nil {
		return "", fmt.Errorf("--vcluster: %s: %w", where, err)
	}
	return value, nil
}

// ValidateServiceCIDR accepts one CIDR or a comma-separated dual-stack pair.
func ValidateServiceCIDR(value string) error {
	parts := strings.Split(value, ",")
	if len(parts) > 2 {
		return fmt.Errorf("service CIDR %q: at most two ranges (IPv4 and IPv6)", value)
	}
	for _, p := range parts {
		if _, _, err := net.ParseCIDR(strings.TrimSpace(p)); err != nil {
			return fmt.Errorf("service CIDR %q: %w", value, err)
		}
	}
	return nil
}
