// Command imagebuild assembles harikube's container image without a
// container daemon and without pulling a base image: for each platform, two
// layers built from files on this machine, a static busybox (for the `cp`
// vCluster's init container runs, and a shell for debugging) and the static
// harikube binary with its component names as relative symlinks, gathered in
// one OCI image index (linux/amd64 and linux/arm64 by default):
//
//	/bin/busybox, /bin/cp, /bin/sh, ...            (applets → busybox)
//	/kubernetes/harikube
//	/kubernetes/kube-apiserver          → harikube
//	/kubernetes/kube-controller-manager → harikube
//	/kubernetes/kine                    → harikube
//
// It is the daemonless twin of the Dockerfile and is run by
// scripts/build-image; it is not part of the harikube binary.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Components are the names harikube answers to, linked to the binary.
var Components = []string{"kube-apiserver", "kube-controller-manager", "kine"}

// fallbackApplets are linked when `busybox --list` cannot run here (an
// image for another architecture).
var fallbackApplets = []string{"cat", "cp", "chmod", "echo", "env", "false", "id", "ln", "ls", "mkdir", "mv", "rm", "sh", "sleep", "test", "true", "wget"}

func main() {
	var binaries, busyboxes fileList
	flag.Var(&binaries, "binary", "static harikube binary, one per platform (repeatable; each file's ELF header says its architecture)")
	flag.Var(&busyboxes, "busybox", "static busybox binary, one per platform (repeatable)")
	var (
		platforms = flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated platforms of the image index")
		ref       = flag.String("image", "harikube:dev", "image reference (name:tag) recorded in the outputs")
		ociDir    = flag.String("oci-layout", "", "write an OCI image layout holding the image index to this directory")
		tarPath   = flag.String("tarball", "", "write a `docker load`-able tarball of one platform's image to this file (docker load takes no index)")
		tarArch   = flag.String("tarball-arch", runtime.GOARCH, "architecture of the image in -tarball")
		version   = flag.String("version", "", "value of the org.opencontainers.image.version label")
		epochStr  = flag.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "timestamp (Unix seconds) of every file and of the image; default 0, for reproducible images")
	)
	archOf := flag.String("arch", "", "only print the architecture of this static ELF executable (exit status 1 if it is not one)")
	flag.Parse()
	if *archOf != "" {
		arch, err := staticELF(*archOf)
		if err != nil {
			fail(err)
		}
		fmt.Println(arch)
		return
	}
	if *ociDir == "" && *tarPath == "" {
		fail(errors.New("nothing to write: pass -oci-layout and/or -tarball"))
	}
	var epoch int64
	if *epochStr != "" {
		var err error
		if epoch, err = strconv.ParseInt(*epochStr, 10, 64); err != nil {
			fail(fmt.Errorf("-source-date-epoch %q: %w", *epochStr, err))
		}
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		fail(fmt.Errorf("-image %q: %w", *ref, err))
	}
	binByArch, err := byArch(binaries)
	if err != nil {
		fail(fmt.Errorf("-binary: %w", err))
	}
	bbByArch, err := byArch(busyboxes)
	if err != nil {
		fail(fmt.Errorf("-busybox: %w", err))
	}
	created := time.Unix(epoch, 0).UTC()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	images := map[string]v1.Image{}
	for _, p := range strings.Split(*platforms, ",") {
		plat, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil {
			fail(fmt.Errorf("-platforms: %w", err))
		}
		if plat.OS != "linux" {
			fail(fmt.Errorf("-platforms: %s: only linux images can be built", p))
		}
		if binByArch[plat.Architecture] == "" || bbByArch[plat.Architecture] == "" {
			fail(fmt.Errorf("platform %s needs a harikube binary and a busybox for %s (have binaries for %v, busyboxes for %v)",
				p, plat.Architecture, keys(binByArch), keys(bbByArch)))
		}
		img, err := Build(Options{Binary: binByArch[plat.Architecture], Busybox: bbByArch[plat.Architecture], Version: *version, Created: created})
		if err != nil {
			fail(err)
		}
		images[plat.Architecture] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	if *ociDir != "" {
		if err := writeLayout(*ociDir, tag, idx); err != nil {
			fail(err)
		}
		fmt.Printf("OCI layout: %s (%s, platforms %s)\n", *ociDir, tag.Name(), *platforms)
	}
	if *tarPath != "" {
		img, ok := images[*tarArch]
		if !ok {
			fail(fmt.Errorf("-tarball-arch %s is not one of -platforms %s", *tarArch, *platforms))
		}
		if err := tarball.WriteToFile(*tarPath, tag, img); err != nil {
			fail(fmt.Errorf("write tarball %s: %w", *tarPath, err))
		}
		fmt.Printf("docker tarball: %s (%s, linux/%s)\n", *tarPath, tag.Name(), *tarArch)
	}
	if d, err := idx.Digest(); err == nil {
		fmt.Printf("image index digest: %s\n", d)
	}
}

// fileList is a repeatable file flag.
type fileList []string

func (l *fileList) String() string     { return strings.Join(*l, ",") }
func (l *fileList) Set(v string) error { *l = append(*l, v); return nil }

// byArch keys static executables by their ELF architecture.
func byArch(files []string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range files {
		arch, err := staticELF(f)
		if err != nil {
			return nil, err
		}
		if prev, dup := out[arch]; dup {
			return nil, fmt.Errorf("%s and %s are both for %s", prev, f, arch)
		}
		out[arch] = f
	}
	return out, nil
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
	os.Exit(1)
}

// Options say what goes into the image.
type Options struct {
	Binary, Busybox string
	Version         string
	Created         time.Time
}

// Build returns the image.
func Build(o Options) (v1.Image, error) {
	arch, err := staticELF(o.Binary)
	if err != nil {
		return nil, err
	}
	bbArch, err := staticELF(o.Busybox)
	if err != nil {
		return nil, err
	}
	if bbArch != arch {
		return nil, fmt.Errorf("%s is for %s but %s is for %s", o.Busybox, bbArch, o.Binary, arch)
	}

	base, err := tarLayer(o.Created, func(w *tarWriter) error {
		w.dir("bin", 0o755)
		if err := w.file("bin/busybox", o.Busybox, 0o755); err != nil {
			return err
		}
		for _, a := range applets(o.Busybox) {
			w.symlink("bin/"+a, "busybox")
		}
		w.dir("etc", 0o755)
		w.content("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644)
		w.content("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)
		w.dir("root", 0o700)
		w.dir("tmp", 0o1777)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	bins, err := tarLayer(o.Created, func(w *tarWriter) error {
		w.dir("kubernetes", 0o755)
		if err := w.file("kubernetes/harikube", o.Binary, 0o755); err != nil {
			return err
		}
		// Relative, so they survive vCluster's `cp -r /kubernetes/. /binaries/`.
		for _, c := range Components {
			w.symlink("kubernetes/"+c, "harikube")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("harikube layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{CreatedBy: "busybox (static)", Created: v1.Time{Time: o.Created}}},
		mutate.Addendum{Layer: bins, History: v1.History{CreatedBy: "harikube /kubernetes", Created: v1.Time{Time: o.Created}}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Config.Env = []string{"PATH=/kubernetes:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Entrypoint = []string{"/kubernetes/harikube"}
	cf.Config.Cmd = []string{"server"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "harikube",
		"org.opencontainers.image.description": "kube-apiserver, kube-controller-manager and Kine with selector pushdown in one static binary; vCluster k8s distro image",
		"org.opencontainers.image.source":      "https://github.com/harikube/harikube",
	}
	if o.Version != "" {
		cf.Config.Labels["org.opencontainers.image.version"] = o.Version
	}
	return mutate.ConfigFile(img, cf)
}

// staticELF checks that path is a statically linked ELF executable (the
// vCluster syncer image is Alpine/musl, so nothing dynamic would run there)
// and returns its architecture in OCI terms.
func staticELF(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked (has an ELF interpreter); a static build is needed (CGO_ENABLED=0, Debian's busybox-static)", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return "", fmt.Errorf("%s needs shared libraries %v; a static build is needed", path, libs)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("%s: unsupported machine %s", path, f.Machine)
}

// applets lists busybox's applets (`busybox --list`), or a fixed set when it
// cannot run on this machine.
func applets(busybox string) []string {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fallbackApplets
	}
	var list []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			list = append(list, a)
		}
	}
	sort.Strings(list)
	if len(list) == 0 {
		return fallbackApplets
	}
	return list
}

// tarWriter writes layer entries with fixed owners and times.
type tarWriter struct {
	tw  *tar.Writer
	mod time.Time
	err error
}

func (w *tarWriter) header(h *tar.Header) {
	if w.err != nil {
		return
	}
	h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname, h.Format = w.mod, 0, 0, "root", "root", tar.FormatPAX
	w.err = w.tw.WriteHeader(h)
}

func (w *tarWriter) dir(name string, mode int64) {
	w.header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode})
}

func (w *tarWriter) symlink(name, target string) {
	w.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
}

func (w *tarWriter) content(name, data string, mode int64) {
	w.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))})
	if w.err == nil {
		_, w.err = io.WriteString(w.tw, data)
	}
}

func (w *tarWriter) file(name, src string, mode int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: fi.Size()})
	if w.err == nil {
		_, w.err = io.Copy(w.tw, f)
	}
	return w.err
}

// tarLayer builds an uncompressed tar in memory and returns it as a gzip
// layer (go-containerregistry compresses it once and caches the digest).
func tarLayer(mod time.Time, fill func(*tarWriter) error) (v1.Layer, error) {
	var buf bytes.Buffer
	w := &tarWriter{tw: tar.NewWriter(&buf), mod: mod}
	if err := fill(w); err != nil {
		return nil, err
	}
	if w.err != nil {
		return nil, w.err
	}
	if err := w.tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// writeLayout writes (or replaces) an OCI layout holding this one image
// index, annotated with its reference as containerd and skopeo expect.
func writeLayout(dir string, tag name.Tag, idx v1.ImageIndex) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.Name(),
	}))
}
