package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/server"
)

// checkOnline has the running server check its index page by page.
func checkOnline(ctx context.Context, kubeconfig, name string) (*datastore.CheckReport, error) {
	if kubeconfig == "" {
		return nil, errors.New("the server is running and no kubeconfig was found to reach it: pass --kubeconfig (a cluster-admin's)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("the server is running; read its kubeconfig %s: %w", kubeconfig, err)
	}
	report := &datastore.CheckReport{}
	if err := serveCustomResources(ctx, cfg, report); err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	for after := int64(0); ; {
		raw, err := client.CoreV1().RESTClient().Get().AbsPath(server.CheckPath).
			Param("after", strconv.FormatInt(after, 10)).Param("datastore", name).DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("check through the running server at %s: %w", cfg.Host, err)
		}
		var page server.CheckPage
		if err := json.Unmarshal(raw, &page); err != nil || page.Report == nil {
			return nil, fmt.Errorf("check through the running server at %s: unexpected answer %.200q", cfg.Host, raw)
		}
		report.Merge(page.Report)
		if !page.More {
			return report, nil
		}
		after = page.Last
	}
}

// serveCustomResources reads one object of every custom resource: the
// apiserver builds a custom resource's storage, and so registers its
// current definition with the index, on the first request for it.
func serveCustomResources(ctx context.Context, cfg *rest.Config, report *datastore.CheckReport) error {
	crdClient, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	crds, err := crdClient.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("the server is running; list its CustomResourceDefinitions through %s: %w", cfg.Host, err)
	}
	for _, crd := range crds.Items {
		version := servedVersion(&crd)
		if version == "" {
			continue
		}
		gvr := schema.GroupVersionResource{Group: crd.Spec.Group, Version: version, Resource: crd.Spec.Names.Plural}
		if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			report.Notes = append(report.Notes, fmt.Sprintf("%s not served (%v): its stored values were compared with their metadata only", crd.Name, err))
		}
	}
	return nil
}

// servedVersion is a version the apiserver serves the resource in, the
// storage version first.
func servedVersion(crd *apiextensionsv1.CustomResourceDefinition) string {
	var served string
	for _, v := range crd.Spec.Versions {
		if v.Served && (v.Storage || served == "") {
			served = v.Name
		}
	}
	return served
}
