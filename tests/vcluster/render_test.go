package vcluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	renderOnce sync.Once
	renderBin  string
	renderErr  error
)

// renderTool builds scripts/render-manifest (a module of its own, with
// Helm's library) once per test process.
func renderTool(t *testing.T) string {
	t.Helper()
	renderOnce.Do(func() {
		renderBin = filepath.Join(workDir, "render-manifest")
		cmd := exec.Command("go", "-C", filepath.Join(repoRoot(t), "scripts", "render-manifest"), "build", "-o", renderBin, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			renderErr = err
			t.Logf("go build scripts/render-manifest:\n%s", out)
		}
	})
	if renderErr != nil {
		t.Fatalf("build scripts/render-manifest: %v", renderErr)
	}
	return renderBin
}

// TestManifestIsRendered: each committed manifest in package/ is byte for
// byte what scripts/render-manifest renders now from the vCluster chart (Go
// module) and its values file: the all-in-one manifest (0.30.0) and the
// per-component one (0.36.1), which is also valid against 0.36.1's schema.
func TestManifestIsRendered(t *testing.T) {
	t.Parallel()
	tool := renderTool(t)
	if out, err := exec.Command(tool, "-root", repoRoot(t), "-check").CombinedOutput(); err != nil {
		t.Errorf("render-manifest -check: %v\n%s", err, out)
	}
	perComponent := []string{"-root", repoRoot(t), "-vcluster", "v0.36.1", "-values", "package/vcluster-0.36-per-component-values.yaml"}
	if out, err := exec.Command(tool, append(perComponent, "-out", "package/vcluster-0.36-per-component.yaml", "-check")...).CombinedOutput(); err != nil {
		t.Errorf("render-manifest -check (per-component, 0.36.1): %v\n%s", err, out)
	}
	if out, err := exec.Command(tool, append(perComponent, "-validate", "v0.36.1")...).CombinedOutput(); err != nil {
		t.Errorf("render-manifest -validate v0.36.1 (per-component values): %v\n%s", err, out)
	}
}

// TestValuesSchema: the values validate against chart/values.schema.json of
// every vCluster version the README's table claims (downloaded through the
// module proxy), with Helm's validator, as `helm install` and `vcluster
// create` validate them; and the validator does reject a key a version's
// schema lacks (0.25 has no controlPlane.distro.k8s.scheduler.enabled).
func TestValuesSchema(t *testing.T) {
	t.Parallel()
	tool := renderTool(t)
	out, err := exec.Command(tool, "-root", repoRoot(t), "-validate", "claimed").CombinedOutput()
	if err != nil {
		t.Fatalf("render-manifest -validate claimed: %v\n%s", err, out)
	}
	for _, v := range []string{"v0.25.0", "v0.30.0", "v0.36.1"} {
		if !strings.Contains(string(out), "vCluster "+v+": ") {
			t.Errorf("%s was not validated:\n%s", v, out)
		}
	}

	values, err := os.ReadFile(filepath.Join(repoRoot(t), "package", "vcluster-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "package"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(values), "      controllerManager:\n", "      scheduler:\n        enabled: false\n      controllerManager:\n", 1)
	if bad == string(values) {
		t.Fatal("the values have no controlPlane.distro.k8s.controllerManager to put the scheduler key before")
	}
	if err := os.WriteFile(filepath.Join(root, "package", "vcluster-values.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(tool, "-root", root, "-validate", "v0.25.0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "additional properties 'enabled' not allowed") {
		t.Errorf("values with controlPlane.distro.k8s.scheduler.enabled against vCluster 0.25.0: want a schema error, got %v\n%s", err, out)
	}
	if out, err := exec.Command(tool, "-root", root, "-validate", "v0.30.0").CombinedOutput(); err != nil {
		t.Errorf("the same values against vCluster 0.30.0 (which has the key): %v\n%s", err, out)
	}
}
