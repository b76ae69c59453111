// Command render-manifest renders a vCluster chart, taken from the vCluster
// Go module (which ships chart/), with a values file, as `helm template`
// would, using Helm's Go library: by default package/vcluster-kine-sqlite.yaml
// (vCluster 0.30.0, package/vcluster-values.yaml). It also validates values
// against the chart schema of each vCluster version the README claims.
//
// It is its own module so that Helm's Kubernetes libraries never meet the
// main module's. Run it from the repository root:
//
//	go -C scripts/render-manifest run .              # rewrite the manifest
//	go -C scripts/render-manifest run . -check       # is the committed file current?
//	go -C scripts/render-manifest run . -validate v0.25.0,v0.36.1
//	go -C scripts/render-manifest run . -vcluster v0.36.1 \
//	    -values package/vcluster-0.36-per-component-values.yaml \
//	    -out package/vcluster-0.36-per-component.yaml     # the per-component manifest
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// ClaimedVersions are the vCluster versions whose chart schema the values
// are validated against by default: the lowest the README claims, the one
// the manifest is rendered from, and the latest.
var ClaimedVersions = []string{"v0.25.0", "v0.30.0", "v0.36.1"}

// Release and namespace of the rendered manifest.
const (
	releaseName = "kine"
	namespace   = "kine"
)

func main() {
	root := flag.String("root", "../..", "repository root (the default suits `go -C scripts/render-manifest run .`)")
	version := flag.String("vcluster", "v0.30.0", "vCluster version whose chart is rendered")
	kubeVersion := flag.String("kube-version", "v1.37.2", "Kubernetes version of the host cluster the chart is rendered for (.Capabilities.KubeVersion)")
	check := flag.Bool("check", false, "only compare the committed manifest with a fresh render (exit status 1 when it differs)")
	valuesFile := flag.String("values", "package/vcluster-values.yaml", "values file, relative to -root")
	outFile := flag.String("out", "package/vcluster-kine-sqlite.yaml", "manifest to write (or -check), relative to -root")
	validate := flag.String("validate", "", "only validate the values against these comma-separated versions' chart schemas (\"claimed\": "+strings.Join(ClaimedVersions, ",")+")")
	flag.Parse()

	valuesPath := filepath.Join(*root, *valuesFile)
	manifestPath := filepath.Join(*root, *outFile)
	values, err := chartutil.ReadValuesFile(valuesPath)
	if err != nil {
		fail(fmt.Errorf("read %s: %w", valuesPath, err))
	}

	if *validate != "" {
		versions := strings.Split(*validate, ",")
		if *validate == "claimed" {
			versions = ClaimedVersions
		}
		var errs []error
		for _, v := range versions {
			ch, err := loadChart(v)
			if err == nil {
				err = validateValues(ch, values)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("vCluster %s: %w", v, err))
				continue
			}
			fmt.Printf("vCluster %s: %s is valid against chart/values.schema.json\n", v, valuesPath)
		}
		if len(errs) > 0 {
			fail(errors.Join(errs...))
		}
		return
	}

	ch, err := loadChart(*version)
	if err != nil {
		fail(err)
	}
	out, err := render(ch, values, *version, *kubeVersion, *valuesFile, *outFile)
	if err != nil {
		fail(err)
	}
	if *check {
		committed, err := os.ReadFile(manifestPath)
		if err != nil {
			fail(err)
		}
		if !bytes.Equal(committed, out) {
			fail(fmt.Errorf("%s is not what the chart renders with %s now; run `%s` and commit the result", manifestPath, valuesPath, renderCommand(*version, *valuesFile, *outFile)))
		}
		fmt.Printf("%s is current (vCluster %s chart, Kubernetes %s)\n", manifestPath, *version, *kubeVersion)
		return
	}
	if err := os.WriteFile(manifestPath, out, 0o644); err != nil {
		fail(err)
	}
	fmt.Printf("wrote %s (vCluster %s chart, Kubernetes %s)\n", manifestPath, *version, *kubeVersion)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "render-manifest: %v\n", err)
	os.Exit(1)
}

// loadChart loads chart/ of the vCluster module at version, downloading
// the module through the Go module proxy when it is not in the cache.
func loadChart(version string) (*chart.Chart, error) {
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/loft-sh/vcluster@"+version)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &mod); jerr == nil && mod.Error != "" {
		return nil, fmt.Errorf("download the vCluster module %s: %s", version, mod.Error)
	}
	if err != nil || mod.Dir == "" {
		return nil, fmt.Errorf("download the vCluster module %s: %v %s", version, err, stderr.String())
	}
	ch, err := loader.Load(filepath.Join(mod.Dir, "chart"))
	if err != nil {
		return nil, fmt.Errorf("load the chart of vCluster %s: %w", version, err)
	}
	// The source tree's Chart.yaml says 0.0.1; vCluster's release packages
	// it with the release's version, which the templates use as the syncer
	// image's tag.
	ch.Metadata.Version = strings.TrimPrefix(version, "v")
	return ch, nil
}

// validateValues is what `helm install` checks: the values merged over the
// chart's defaults, against chart/values.schema.json.
func validateValues(ch *chart.Chart, values chartutil.Values) error {
	merged, err := chartutil.CoalesceValues(ch, values)
	if err != nil {
		return err
	}
	return chartutil.ValidateAgainstSchema(ch, merged)
}

// render is `helm template kine <chart> --namespace kine --values ...
// --kube-version ...`, with a header, in Helm's install order.
func render(ch *chart.Chart, values chartutil.Values, version, kubeVersion, valuesFile, outFile string) ([]byte, error) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, fmt.Errorf("-kube-version %q: %w", kubeVersion, err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart renders %d hooks, which `kubectl apply` would not run as Helm does", len(hooks))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, header, version, ch.Metadata.Version, valuesFile, kubeVersion, valuesFile, renderCommand(version, valuesFile, outFile), outFile, outFile)
	for _, m := range manifests {
		if m.Head != nil && m.Head.Kind == "Namespace" {
			return nil, fmt.Errorf("%s renders a Namespace; the manifest must not hold one (deleting it would delete the database's PVC)", m.Name)
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return b.Bytes(), nil
}

const header = `# harikube as a vCluster control plane: release "kine" in namespace "kine".
# Generated by scripts/render-manifest (do not edit): the chart of vCluster %s
# (from its Go module, packaged as chart version %s) rendered with
# %s for a Kubernetes %s host, as
#
#   helm template kine vcluster --repo https://charts.loft.sh --version <chart version> \
#     --namespace kine --values %s
#
# would. After editing the values: %s
#
# Install (the namespace is not part of this file, see below):
#
#   kubectl create namespace kine
#   kubectl apply -n kine -f %s
#
# Remove: kubectl delete -n kine -f %s deletes every
# object listed here; what the syncer created on the host (the Secrets kine-certs and
# vc-kine, synced pods, services, ...) is owned by the Service kine and garbage-collected
# with it. Kept: the namespace and the PVC data-kine-0 with harikube's database
# (under /data; the StatefulSet's PVC retention policy is Retain), so applying the
# file again brings the same virtual cluster back. To delete the data for good:
#
#   kubectl delete -n kine pvc data-kine-0      (or: kubectl delete namespace kine)
#
# See README.md, section "vCluster".
`

// renderCommand is how to re-render outFile; the default manifest needs no flags.
func renderCommand(version, valuesFile, outFile string) string {
	if version == "v0.30.0" && valuesFile == "package/vcluster-values.yaml" && outFile == "package/vcluster-kine-sqlite.yaml" {
		return "go -C scripts/render-manifest run ."
	}
	return fmt.Sprintf("go -C scripts/render-manifest run . -vcluster %s -values %s -out %s", version, valuesFile, outFile)
}
