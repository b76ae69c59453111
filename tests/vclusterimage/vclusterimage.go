// Package vclusterimage builds harikube's vCluster image the daemonless way
// (scripts/build-image), unpacks it and runs the init container's copy
// (`cp -r /kubernetes/. /binaries/` with the image's own busybox), for the
// tests that run what vCluster runs.
package vclusterimage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Image is an image built into one directory.
type Image struct {
	Ref       string // what the image is tagged as
	OCILayout string // scripts/build-image --oci-layout
	Tarball   string // scripts/build-image --tarball
	RootFS    string // the image's files, unpacked
	Binaries  string // `cp -r /kubernetes/. /binaries/` run with the image's own cp
}

// InDir is the image Build built into dir.
func InDir(ref, dir string) Image {
	return Image{
		Ref:       ref,
		OCILayout: filepath.Join(dir, "oci"),
		Tarball:   filepath.Join(dir, "image.tar"),
		RootFS:    filepath.Join(dir, "rootfs"),
		Binaries:  filepath.Join(dir, "binaries"),
	}
}

// Build runs scripts/build-image (from repoRoot) with the harikube binary
// bin, tagged ref, into dir, unpacks it and fills Binaries the way vCluster's
// init container does.
func Build(repoRoot, bin, ref, dir string) (Image, error) {
	b := InDir(ref, dir)
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "build-image"), "--binary", bin, "--image", ref, "--oci-layout", b.OCILayout, "--tarball", b.Tarball)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("scripts/build-image: %v\n%s", err, out)
	}
	if err := Unpack(b.OCILayout, ref, b.RootFS); err != nil {
		return Image{}, fmt.Errorf("unpack: %w", err)
	}
	if err := b.InitCopy(b.Binaries); err != nil {
		return Image{}, err
	}
	return b, nil
}

// PlatformImage is the linux/arch image of the one image index in an OCI
// layout, which must be named ref.
func PlatformImage(layoutDir, ref, arch string) (v1.Image, error) {
	root, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		return nil, err
	}
	manifest, err := root.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(manifest.Manifests) != 1 {
		return nil, fmt.Errorf("want one image index in the layout, found %d entries", len(manifest.Manifests))
	}
	if got := manifest.Manifests[0].Annotations["io.containerd.image.name"]; got != ref {
		return nil, fmt.Errorf("layout names the image %q, want %q", got, ref)
	}
	idx, err := root.ImageIndex(manifest.Manifests[0].Digest)
	if err != nil {
		return nil, fmt.Errorf("the layout's entry is not an image index: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("the image index has no linux/%s image", arch)
}

// InitCopy is the init container: command [cp], args [-r, /kubernetes/.,
// /binaries/], exec'd without a shell, with the image's own cp (busybox,
// static), into binaries.
func (b Image) InitCopy(binaries string) error {
	if err := os.MkdirAll(binaries, 0o755); err != nil {
		return err
	}
	cp := exec.Command(filepath.Join(b.RootFS, "bin", "cp"), "-r", filepath.Join(b.RootFS, "kubernetes")+"/.", binaries+"/")
	if out, err := cp.CombinedOutput(); err != nil {
		return fmt.Errorf("image's cp -r /kubernetes/. /binaries/: %v\n%s", err, out)
	}
	return nil
}

// Unpack flattens this machine's image (runtime.GOARCH) of the image index
// in an OCI layout, which must be named ref, into dir.
func Unpack(layoutDir, ref, dir string) error {
	image, err := PlatformImage(layoutDir, ref, runtime.GOARCH)
	if err != nil {
		return err
	}
	rc := mutate.Extract(image)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			if err := os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), target); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode).Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		}
	}
}
