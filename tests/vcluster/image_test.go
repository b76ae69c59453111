package vcluster

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/harikube/harikube/tests/vclusterimage"
)

// components are the files vCluster's k8s distro contract needs in
// /kubernetes, plus harikube itself.
var components = []string{"harikube", "kube-apiserver", "kube-controller-manager", "kine"}

// TestImageLayout checks the image built by scripts/build-image: the four
// files under /kubernetes are static executables (or relative links to one),
// the image has the cp the init container runs, and the copy it makes into
// /binaries runs.
func TestImageLayout(t *testing.T) {
	t.Parallel()
	b := image(t)

	for _, dir := range []string{filepath.Join(b.RootFS, "kubernetes"), b.Binaries} {
		for _, name := range components {
			path := filepath.Join(dir, name)
			fi, err := os.Lstat(path)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(path)
				if filepath.IsAbs(target) {
					t.Errorf("%s links to %s: an absolute link breaks when copied to /binaries", path, target)
				}
				resolved, err := filepath.EvalSymlinks(path)
				if err != nil {
					t.Errorf("%s: %v", path, err)
					continue
				}
				if filepath.Dir(resolved) != dir {
					t.Errorf("%s resolves to %s, outside %s", path, resolved, dir)
				}
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 != 0o111 {
				t.Errorf("%s: mode %s, want an executable file", path, st.Mode())
			}
			checkStatic(t, path)
		}
	}
	// What the init container execs: cp, found on PATH, and static.
	cp := filepath.Join(b.RootFS, "bin", "cp")
	if _, err := os.Stat(cp); err != nil {
		t.Errorf("image has no /bin/cp: %v", err)
	} else {
		checkStatic(t, cp)
	}

	// The docker-loadable tarball holds the same image as the OCI layout.
	tag, err := name.NewTag(imageRef)
	if err != nil {
		t.Fatal(err)
	}
	fromTar, err := tarball.ImageFromPath(b.Tarball, &tag)
	if err != nil {
		t.Fatalf("tarball: %v", err)
	}
	fromLayout, err := vclusterimage.PlatformImage(b.OCILayout, imageRef, runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	tarConfig, err := fromTar.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layoutConfig, err := fromLayout.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if tarConfig != layoutConfig {
		t.Errorf("tarball image config %s, OCI layout image config %s", tarConfig, layoutConfig)
	}
	cf, err := fromLayout.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("image platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}

	out, err := exec.Command(filepath.Join(b.Binaries, "harikube"), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Kubernetes "+k8sVersion(t)) {
		t.Errorf("/binaries/harikube version: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(b.Binaries, "kube-apiserver"), "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "Kubernetes "+k8sVersion(t) {
		t.Errorf("/binaries/kube-apiserver --version: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(b.Binaries, "kube-controller-manager"), "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "Kubernetes "+k8sVersion(t) {
		t.Errorf("/binaries/kube-controller-manager --version: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(b.Binaries, "kine"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "kine version ") {
		t.Errorf("/binaries/kine --version: %v\n%s", err, out)
	}
}

// checkStatic fails unless path is an ELF executable without an
// interpreter or shared libraries (the syncer image is Alpine/musl).
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%s: not ELF: %v", path, err)
		return
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", path, libs)
	}
}

// TestImagePlatforms: the OCI layout holds one image index with a linux/amd64
// and a linux/arm64 image, and in each, /kubernetes/harikube and the
// init container's /bin/busybox are static executables for that machine.
func TestImagePlatforms(t *testing.T) {
	t.Parallel()
	b := image(t)
	idx, err := layout.ImageIndexFromPath(b.OCILayout)
	if err != nil {
		t.Fatal(err)
	}
	top, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != types.OCIImageIndex {
		t.Fatalf("layout entries %+v, want one OCI image index", top.Manifests)
	}
	inner, err := idx.ImageIndex(top.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := inner.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range im.Manifests {
		platforms = append(platforms, d.Platform.String())
	}
	if strings.Join(platforms, " ") != "linux/amd64 linux/arm64" {
		t.Errorf("index platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch, machine := range machines {
		img, err := vclusterimage.PlatformImage(b.OCILayout, imageRef, arch)
		if err != nil {
			t.Errorf("%s: %v", arch, err)
			continue
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != arch {
			t.Errorf("%s image config says %s/%s", arch, cf.OS, cf.Architecture)
		}
		files := readFiles(t, img, "kubernetes/harikube", "bin/busybox")
		for _, name := range []string{"kubernetes/harikube", "bin/busybox"} {
			f, err := elf.NewFile(bytes.NewReader(files[name]))
			if err != nil {
				t.Errorf("%s image /%s: not ELF: %v", arch, name, err)
				continue
			}
			if f.Machine != machine {
				t.Errorf("%s image /%s is for %s, want %s", arch, name, f.Machine, machine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s image /%s is dynamically linked", arch, name)
				}
			}
		}
	}
}

// readFiles reads the named regular files from img's flattened file system.
func readFiles(t *testing.T, img v1.Image, names ...string) map[string][]byte {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string][]byte{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if name := strings.TrimPrefix(h.Name, "/"); want[name] && h.Typeflag == tar.TypeReg {
			if out[name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range names {
		if out[n] == nil {
			t.Errorf("image has no regular file /%s", n)
		}
	}
	return out
}
