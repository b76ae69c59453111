// Package dist runs `make dist` and checks the four release binaries it
// writes the way their platforms would: each is an executable for its
// operating system and CPU, the Linux ones are static, the macOS ones link
// only system libraries and the darwin/arm64 one carries a valid ad-hoc
// signature (Apple silicon runs nothing unsigned), and SHA256SUMS holds
// their checksums.
package dist

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// version is what the test asks make dist to stamp into every binary.
const version = "v0.0.0-dist-test"

var platforms = []struct {
	goos, goarch string
	elfMachine   elf.Machine
	machoCPU     macho.Cpu
}{
	{goos: "linux", goarch: "amd64", elfMachine: elf.EM_X86_64},
	{goos: "linux", goarch: "arm64", elfMachine: elf.EM_AARCH64},
	{goos: "darwin", goarch: "amd64", machoCPU: macho.CpuAmd64},
	{goos: "darwin", goarch: "arm64", machoCPU: macho.CpuArm64},
}

func TestMakeDist(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dist := filepath.Join(t.TempDir(), "dist")
	// make dist replaces its own files and leaves anything else in DIST alone.
	const unrelated, unrelatedText = "harikube-notes.txt", "not make's\n"
	if err := os.MkdirAll(dist, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dist, unrelated), []byte(unrelatedText), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dist, "harikube-linux-amd64"), []byte("an older build\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "--no-print-directory", "dist", "DIST="+dist, "VERSION="+version)
	cmd.Dir = root
	// Go records no -ldflags under -trimpath; the build must be the Makefile's own.
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make dist: %v\n%s", err, out)
	}

	sums := readSums(t, filepath.Join(dist, "SHA256SUMS"))
	var want []string
	for _, p := range platforms {
		want = append(want, "harikube-"+p.goos+"-"+p.goarch)
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	sort.Strings(want)
	wantFiles := append(append([]string{}, want...), "SHA256SUMS", unrelated)
	sort.Strings(wantFiles)
	if strings.Join(got, " ") != strings.Join(wantFiles, " ") {
		t.Errorf("make dist left %v, want %v", got, wantFiles)
	}
	if b, err := os.ReadFile(filepath.Join(dist, unrelated)); err != nil || string(b) != unrelatedText {
		t.Errorf("make dist changed %s: %q, %v", unrelated, b, err)
	}
	var summed []string
	for name := range sums {
		summed = append(summed, name)
	}
	sort.Strings(summed)
	if strings.Join(summed, " ") != strings.Join(want, " ") {
		t.Errorf("SHA256SUMS lists %v, want %v", summed, want)
	}

	for _, p := range platforms {
		name := "harikube-" + p.goos + "-" + p.goarch
		t.Run(p.goos+"-"+p.goarch, func(t *testing.T) {
			path := filepath.Join(dist, name)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if got := hex.EncodeToString(sum[:]); got != sums[name] {
				t.Errorf("SHA256SUMS says %s, the file's SHA-256 is %s", sums[name], got)
			}
			if st, err := os.Stat(path); err != nil {
				t.Error(err)
			} else if st.Mode().Perm()&0o111 != 0o111 {
				t.Errorf("%s is not executable: %v", name, st.Mode())
			}
			checkBuildInfo(t, path, p.goos, p.goarch)
			if p.goos == "linux" {
				checkStaticELF(t, path, p.elfMachine)
			} else {
				checkMachO(t, path, data, p.machoCPU, p.goarch == "arm64")
			}
			// The one for this machine runs.
			if p.goos == runtime.GOOS && p.goarch == runtime.GOARCH {
				out, err := exec.Command(path, "version").CombinedOutput()
				if err != nil || !strings.HasPrefix(string(out), "harikube "+version+"\n") {
					t.Errorf("%s version: %v\n%s", name, err, out)
				}
			}
		})
	}
}

// readSums parses sha256sum's output: "<hex>  <name>" per line.
func readSums(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("SHA256SUMS line %q is not \"<sha256>  <file>\"", sc.Text())
		}
		sums[name] = sum
	}
	return sums
}

// checkBuildInfo: built for the platform, without cgo, with the Makefile's
// version ldflags.
func checkBuildInfo(t *testing.T, path, goos, goarch string) {
	t.Helper()
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("build info: %v", err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{"GOOS": goos, "GOARCH": goarch, "CGO_ENABLED": "0"} {
		if settings[key] != want {
			t.Errorf("built with %s=%q, want %q", key, settings[key], want)
		}
	}
	if ld := settings["-ldflags"]; !strings.Contains(ld, "pkg/version.Version="+version) || !strings.Contains(ld, "k8s.io/component-base/version.gitVersion=v1.") {
		t.Errorf("-ldflags %q lack harikube's or Kubernetes' version", ld)
	}
}

func checkStaticELF(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("not ELF: %v", err)
	}
	defer f.Close()
	if f.Machine != machine || f.Type != elf.ET_EXEC {
		t.Errorf("ELF %s %s, want an executable for %s", f.Type, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("dynamically linked (has an interpreter)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("needs shared libraries %v", libs)
	}
}

// macOS's own libraries and frameworks; every Mac has them.
var systemLibraryPrefixes = []string{"/usr/lib/", "/System/Library/Frameworks/"}

func checkMachO(t *testing.T, path string, data []byte, cpu macho.Cpu, mustBeSigned bool) {
	t.Helper()
	f, err := macho.Open(path)
	if err != nil {
		t.Fatalf("not Mach-O: %v", err)
	}
	defer f.Close()
	if f.Cpu != cpu || f.Type != macho.TypeExec {
		t.Errorf("Mach-O %v %v, want an executable for %v", f.Type, f.Cpu, cpu)
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	hasLibSystem := false
	for _, lib := range libs {
		hasLibSystem = hasLibSystem || lib == "/usr/lib/libSystem.B.dylib"
		system := false
		for _, prefix := range systemLibraryPrefixes {
			system = system || strings.HasPrefix(lib, prefix)
		}
		if !system {
			t.Errorf("links %s, which is not a macOS system library", lib)
		}
	}
	if !hasLibSystem {
		t.Errorf("does not link libSystem (links %v)", libs)
	}
	sig, found := codeSignature(f, data)
	if !found {
		if mustBeSigned {
			t.Errorf("has no code signature; Apple silicon refuses to run it")
		}
		return
	}
	if err := checkAdHocSignature(sig, data); err != nil {
		t.Errorf("code signature: %v", err)
		return
	}
	t.Logf("ad-hoc signature: every page's SHA-256 matches")
	// The check catches a changed byte, as the kernel would.
	changed := bytes.Clone(data)
	changed[len(changed)/3] ^= 0xff
	if err := checkAdHocSignature(sig, changed); err == nil {
		t.Errorf("the signature check accepted a file with a changed byte")
	}
}

// LC_CODE_SIGNATURE, which debug/macho leaves as raw bytes.
const loadCodeSignature = 0x1d

// codeSignature returns the signature blob LC_CODE_SIGNATURE points at.
func codeSignature(f *macho.File, data []byte) ([]byte, bool) {
	for _, l := range f.Loads {
		raw := l.Raw()
		if len(raw) < 16 || f.ByteOrder.Uint32(raw) != loadCodeSignature {
			continue
		}
		off, size := f.ByteOrder.Uint32(raw[8:]), f.ByteOrder.Uint32(raw[12:])
		if uint64(off)+uint64(size) > uint64(len(data)) {
			return nil, false
		}
		return data[off : off+size], true
	}
	return nil, false
}

// Code signing structures (Apple's cs_blobs.h), all big-endian.
const (
	magicEmbeddedSignature = 0xfade0cc0
	magicCodeDirectory     = 0xfade0c02
	slotCodeDirectory      = 0
	flagAdHoc              = 0x2
	hashTypeSHA256         = 2
)

// checkAdHocSignature checks that the signature is an ad-hoc one whose code
// directory hashes every page of the file up to its code limit with
// SHA-256, as the kernel verifies each page when it maps it.
func checkAdHocSignature(sig, file []byte) error {
	be := binary.BigEndian
	if len(sig) < 12 {
		return fmt.Errorf("%d bytes: too short for a signature", len(sig))
	}
	if magic := be.Uint32(sig); magic != magicEmbeddedSignature {
		return fmt.Errorf("not an embedded signature (magic %#x)", magic)
	}
	count := be.Uint32(sig[8:])
	var cd []byte
	for i := uint32(0); i < count; i++ {
		entry := 12 + 8*int(i)
		if entry+8 > len(sig) {
			return fmt.Errorf("blob index %d out of range", i)
		}
		if be.Uint32(sig[entry:]) == slotCodeDirectory {
			off := be.Uint32(sig[entry+4:])
			if int(off)+8 > len(sig) {
				return fmt.Errorf("code directory offset %d out of range", off)
			}
			cd = sig[off:]
			break
		}
	}
	if cd == nil || be.Uint32(cd) != magicCodeDirectory {
		return fmt.Errorf("no code directory")
	}
	if length := be.Uint32(cd[4:]); int(length) > len(cd) || length < 44 {
		return fmt.Errorf("code directory length %d out of range", length)
	}
	flags := be.Uint32(cd[12:])
	hashOffset := be.Uint32(cd[16:])
	codeSlots := be.Uint32(cd[28:])
	codeLimit := be.Uint32(cd[32:])
	hashSize, hashType, pageShift := cd[36], cd[37], cd[39]
	if flags&flagAdHoc == 0 {
		return fmt.Errorf("flags %#x: not ad-hoc", flags)
	}
	if hashType != hashTypeSHA256 || hashSize != sha256.Size {
		return fmt.Errorf("hash type %d size %d, want SHA-256", hashType, hashSize)
	}
	if pageShift == 0 {
		return fmt.Errorf("one hash for the whole file (page size 0); Go's linker hashes pages")
	}
	page := uint64(1) << pageShift
	if uint64(codeLimit) > uint64(len(file)) || uint64(codeSlots) != (uint64(codeLimit)+page-1)/page {
		return fmt.Errorf("%d code slots of %d bytes for a code limit of %d in a %d-byte file", codeSlots, page, codeLimit, len(file))
	}
	if uint64(hashOffset)+uint64(codeSlots)*sha256.Size > uint64(len(cd)) {
		return fmt.Errorf("hash slots out of range")
	}
	for i := uint64(0); i < uint64(codeSlots); i++ {
		start, end := i*page, min((i+1)*page, uint64(codeLimit))
		sum := sha256.Sum256(file[start:end])
		slot := cd[uint64(hashOffset)+i*sha256.Size:][:sha256.Size]
		if !bytes.Equal(sum[:], slot) {
			return fmt.Errorf("page %d (bytes %d-%d) does not match its hash", i, start, end)
		}
	}
	return nil
}
