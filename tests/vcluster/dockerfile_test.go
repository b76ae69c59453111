package vcluster

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/harikube/harikube/tests/vclusterimage"
)

// dockerVersion is the VERSION build argument the test passes, as
// `docker build --build-arg VERSION=...` would.
const dockerVersion = "v0.0.0-dockerfile-test"

// dockerDefaultPath is the PATH docker gives a RUN when the image sets none.
const dockerDefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// TestDockerfile builds the image the Dockerfile describes without a
// container daemon and compares it with the image scripts/build-image makes,
// which the other tests run. BuildKit's own parser reads the Dockerfile and
// its instructions are carried out as docker carries them out: COPY from the
// build context (less .dockerignore) or from another stage's files, and each
// RUN line by /bin/sh in a chroot of the stage's files. The build stage's
// chroot has this machine's /usr, /etc and /root read-only (its Go standing
// in for the golang image) and only the Go caches writable; the final
// stage's holds the tested image's static busybox standing in for the
// busybox image. The final stage's /kubernetes must then be the tested
// image's, and its entrypoint, command, environment and labels the ones
// scripts/build-image writes.
func TestDockerfile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the Dockerfile's stages run in chroots (CI runs as root)")
	}
	goEnv := goEnvironment(t)
	t.Parallel()
	b := image(t)
	root := repoRoot(t)

	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	stages, metaArgs, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) != 2 || stages[0].Name != "build" {
		t.Fatalf("Dockerfile has stages %v, want a build stage and the image", stageNames(stages))
	}
	var args []string // the global ARGs' defaults, which FROM lines expand
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				args = append(args, kv.Key+"="+*kv.Value)
			}
		}
	}
	expand := func(s string) string {
		word, err := expander(args)(s)
		if err != nil {
			t.Fatalf("Dockerfile: %s: %v", s, err)
		}
		return word
	}

	// golang:<GO_VERSION> must carry the Go go.mod asks for.
	build, final := stages[0], stages[1]
	goVersion := goModVersion(t, root)
	if base := expand(build.BaseName); base != "golang:"+goVersion {
		t.Errorf("build stage FROM %s, want golang:%s (go.mod's go line)", base, goVersion)
	}
	if base := expand(final.BaseName); !strings.HasPrefix(base, "busybox:") {
		t.Errorf("image FROM %s, want busybox (vCluster's init container runs its cp)", base)
	}

	buildCtx := buildContext{dir: root, ignore: dockerignore(t, root)}

	buildRoot := chrootDir(t)
	machine := machineMounts(t, buildRoot, goEnv)
	runStage(t, build, buildRoot, machine, append(goEnv.vars, goEnv.path), buildCtx, nil)

	imageRoot := chrootDir(t)
	if out, err := exec.Command("cp", "-a", filepath.Join(b.RootFS, "bin"), filepath.Join(imageRoot, "bin")).CombinedOutput(); err != nil {
		t.Fatalf("the tested image's busybox for the image stage: %v\n%s", err, out)
	}
	env := runStage(t, final, imageRoot, nil, []string{dockerDefaultPath}, buildCtx, map[string]string{build.Name: buildRoot})

	// The same /kubernetes as the tested image: names, links, executables.
	want := listDir(t, filepath.Join(b.RootFS, "kubernetes"))
	got := listDir(t, filepath.Join(imageRoot, "kubernetes"))
	if !slices.Equal(got, want) {
		t.Errorf("the Dockerfile's /kubernetes holds\n  %v\nscripts/build-image's holds\n  %v", got, want)
	}
	checkStatic(t, filepath.Join(imageRoot, "kubernetes", "harikube"))
	out, err := exec.Command(filepath.Join(imageRoot, "kubernetes", "kine"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "kine version ") {
		t.Errorf("the Dockerfile's /kubernetes/kine --version: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(imageRoot, "kubernetes", "harikube"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "harikube "+dockerVersion+"\nKubernetes "+k8sVersion(t)+"\n") {
		t.Errorf("the Dockerfile's harikube version (built with VERSION=%s): %v\n%s", dockerVersion, err, out)
	}

	// The same configuration as the tested image.
	im, err := vclusterimage.PlatformImage(b.OCILayout, imageRef, runtime.GOARCH)
	if err != nil {
		t.Fatalf("the tested image: %v", err)
	}
	cf, err := im.ConfigFile()
	if err != nil {
		t.Fatalf("the tested image's configuration: %v", err)
	}
	var entrypoint, command []string
	labels := map[string]string{}
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.EntrypointCommand:
			entrypoint = c.CmdLine
		case *instructions.CmdCommand:
			command = c.CmdLine
		case *instructions.LabelCommand:
			if err := c.Expand(expander(env)); err != nil {
				t.Fatalf("%s: %v", c, err)
			}
			for _, kv := range c.Labels {
				labels[kv.Key] = kv.Value
			}
		}
	}
	if !slices.Equal(entrypoint, cf.Config.Entrypoint) || !slices.Equal(command, cf.Config.Cmd) {
		t.Errorf("Dockerfile ENTRYPOINT %q CMD %q, scripts/build-image %q %q", entrypoint, command, cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if !slices.Equal(env, cf.Config.Env) {
		t.Errorf("Dockerfile environment %q, scripts/build-image %q", env, cf.Config.Env)
	}
	// scripts/build-image also labels the version it is given (--version).
	for k, v := range cf.Config.Labels {
		if k != "org.opencontainers.image.version" && labels[k] != v {
			t.Errorf("label %s: Dockerfile %q, scripts/build-image %q", k, labels[k], v)
		}
	}
	for k := range labels {
		if _, ok := cf.Config.Labels[k]; !ok {
			t.Errorf("the Dockerfile sets label %s, scripts/build-image does not", k)
		}
	}
}

// mount is a host directory bound into a chroot.
type mount struct {
	host, in string // in: the path inside the chroot
	writable bool
}

// buildContext is what docker sends the builder: dir less .dockerignore.
type buildContext struct {
	dir    string
	ignore *patternmatcher.PatternMatcher
}

// runStage carries out a stage's instructions in a chroot of dir and
// returns the stage's environment: COPY from the build context or from the
// files of stages built before (by name), RUN by /bin/sh with mounts bound.
func runStage(t *testing.T, stage instructions.Stage, dir string, mounts []mount, env []string, buildCtx buildContext, stageRoots map[string]string) []string {
	t.Helper()
	workdir := "/"
	for _, c := range stage.Commands {
		switch c := c.(type) {
		case *instructions.WorkdirCommand:
			workdir = path.Join(workdir, c.Path)
		case *instructions.EnvCommand:
			if err := c.Expand(expander(env)); err != nil {
				t.Fatalf("%s: %v", c, err)
			}
			for _, kv := range c.Env {
				env = setEnv(env, kv.Key, kv.Value)
			}
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				if kv.Key != "VERSION" {
					t.Fatalf("%s: the test passes only --build-arg VERSION", c)
				}
				env = setEnv(env, kv.Key, dockerVersion)
			}
		case *instructions.CopyCommand:
			from, ignore := buildCtx.dir, buildCtx.ignore
			if c.From != "" {
				if from = stageRoots[c.From]; from == "" {
					t.Fatalf("%s: no stage %q built before", c, c.From)
				}
				ignore = nil
			}
			copyInto(t, c, from, ignore, dir, workdir)
		case *instructions.RunCommand:
			if !c.PrependShell || len(c.CmdLine) != 1 {
				t.Fatalf("%s: want a shell-form RUN", c)
			}
			runInChroot(t, dir, mounts, env, workdir, c.CmdLine[0])
		case *instructions.LabelCommand, *instructions.EntrypointCommand, *instructions.CmdCommand:
		default:
			t.Fatalf("the test does not carry out %T (%s)", c, c)
		}
	}
	return env
}

// copyInto carries out COPY: each source, relative to from, to the
// destination in root, relative to workdir. A directory's contents are
// copied; a destination ending in "/" (or several sources) is a directory.
func copyInto(t *testing.T, c *instructions.CopyCommand, from string, ignore *patternmatcher.PatternMatcher, root, workdir string) {
	t.Helper()
	dest := c.DestPath
	if !path.IsAbs(dest) {
		dest = path.Join(workdir, dest)
	}
	intoDir := strings.HasSuffix(c.DestPath, "/") || c.DestPath == "." || len(c.SourcePaths) > 1
	for _, src := range c.SourcePaths {
		if strings.ContainsAny(src, "*?[") {
			t.Fatalf("%s: the test copies no wildcards", c)
		}
		rel := path.Clean(strings.TrimPrefix(src, "/"))
		fi, err := os.Lstat(filepath.Join(from, rel))
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		target := filepath.Join(root, dest)
		if intoDir && !fi.IsDir() {
			target = filepath.Join(target, path.Base(rel))
		}
		err = filepath.WalkDir(filepath.Join(from, rel), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			inContext, err := filepath.Rel(from, p)
			if err != nil {
				return err
			}
			if ignore != nil && inContext != "." {
				if skip, err := ignore.MatchesOrParentMatches(filepath.ToSlash(inContext)); err != nil || skip {
					if d.IsDir() && err == nil {
						return filepath.SkipDir
					}
					return err
				}
			}
			underSource, err := filepath.Rel(filepath.Join(from, rel), p)
			if err != nil {
				return err
			}
			return copyEntry(p, filepath.Join(target, underSource), d)
		})
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
}

// copyEntry copies one file, link or directory, keeping its mode.
func copyEntry(from, to string, d fs.DirEntry) error {
	info, err := d.Info()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	switch {
	case d.IsDir():
		return os.MkdirAll(to, info.Mode().Perm())
	case info.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(from)
		if err != nil {
			return err
		}
		return os.Symlink(target, to)
	default:
		data, err := os.ReadFile(from)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, info.Mode().Perm())
	}
}

// dockerignore is the build context's .dockerignore, as docker applies it.
func dockerignore(t *testing.T, dir string) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	if err != nil {
		t.Fatalf("the build context's .dockerignore: %v", err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	return pm
}

// runInChroot runs script with /bin/sh -c in workdir of a chroot of dir,
// with env as its whole environment, in a mount namespace of its own where
// the mounts are bound (read-only unless writable). The namespace is
// private, so the mounts never appear outside it, and it ends, mounts and
// all, with the command: removing dir afterwards cannot reach the host's
// files.
func runInChroot(t *testing.T, dir string, mounts []mount, env []string, workdir, script string) {
	t.Helper()
	const setup = `set -e; root=$1 workdir=$2 script=$3; shift 3
while [ $# -gt 0 ]; do
	mkdir -p "$root$2"; mount --rbind "$1" "$root$2"
	if [ "$3" = ro ]; then mount -o remount,bind,ro "$root$2"; fi
	shift 3
done
mkdir -p "$root/tmp"
exec chroot "$root" /bin/sh -c 'cd "$1" && eval "$2"' sh "$workdir" "$script"`
	args := []string{"--mount", "--propagation", "private", "/bin/sh", "-c", setup, "sh", dir, workdir, script}
	for _, m := range mounts {
		mode := "ro"
		if m.writable {
			mode = "rw"
		}
		args = append(args, m.host, m.in, mode)
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("RUN %s: %v\n%s", script, err, out)
	}
}

// goEnv is the Go toolchain the build stage runs, standing in for the
// golang image's.
type goEnv struct {
	path   string   // PATH, with the go command's directory first
	caches []string // GOCACHE and GOMODCACHE: the only writable mounts
	vars   []string // the environment that points go at them, offline
}

// goEnvironment finds this machine's Go; it must live under /usr, which the
// build stage's chroot holds.
func goEnvironment(t *testing.T) goEnv {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	if goCmd, err = filepath.EvalSymlinks(goCmd); err != nil {
		t.Fatalf("the go command: %v", err)
	}
	if !strings.HasPrefix(goCmd, "/usr/") {
		t.Skipf("the build stage's chroot holds /usr; go is at %s", goCmd)
	}
	out, err := exec.Command(goCmd, "env", "-json", "GOCACHE", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	var e struct{ GOCACHE, GOMODCACHE string }
	if err := json.Unmarshal(out, &e); err != nil || e.GOCACHE == "" || e.GOMODCACHE == "" {
		t.Fatalf("go env -json: %v: %s", err, out)
	}
	return goEnv{
		path:   "PATH=" + filepath.Dir(goCmd) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		caches: []string{e.GOCACHE, e.GOMODCACHE},
		// Offline and this toolchain: the test downloads nothing.
		vars: []string{"HOME=/root", "GOCACHE=" + e.GOCACHE, "GOMODCACHE=" + e.GOMODCACHE, "GOPROXY=off", "GOTOOLCHAIN=local"},
	}
}

// machineMounts gives dir this machine's system directories read-only (its
// top-level links, as on a merged-/usr system, made as links), /dev and
// /proc, and the Go caches writable.
func machineMounts(t *testing.T, dir string, g goEnv) []mount {
	t.Helper()
	var mounts []mount
	for _, d := range []string{"usr", "etc", "root", "bin", "sbin", "lib", "lib64"} {
		fi, err := os.Lstat("/" + d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink("/" + d)
			if err != nil {
				t.Fatalf("/%s: %v", d, err)
			}
			if err := os.Symlink(target, filepath.Join(dir, d)); err != nil {
				t.Fatal(err)
			}
		default:
			mounts = append(mounts, mount{host: "/" + d, in: "/" + d})
		}
	}
	mounts = append(mounts, mount{host: "/dev", in: "/dev", writable: true}, mount{host: "/proc", in: "/proc", writable: true})
	for _, c := range g.caches {
		mounts = append(mounts, mount{host: c, in: c, writable: true})
	}
	return mounts
}

// chrootDir is a temporary directory for a stage's files, removed at the
// end of the test.
func chrootDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(workDir, "dockerfile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// listDir lists dir's entries as "name -> target" for links and
// "name mode" for files.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e.Name()+" -> "+target)
		} else {
			out = append(out, e.Name()+" "+fi.Mode().String())
		}
	}
	return out
}

// expander expands a word of an instruction as BuildKit does (quotes
// removed, variables of env substituted).
func expander(env []string) instructions.SingleWordExpander {
	lex := shell.NewLex('\\')
	return func(word string) (string, error) {
		out, _, err := lex.ProcessWord(word, shell.EnvsFromSlice(env))
		return out, err
	}
}

func setEnv(env []string, key, value string) []string {
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, key+"=") })
	return append(env, key+"="+value)
}

func stageNames(stages []instructions.Stage) []string {
	var out []string
	for _, s := range stages {
		out = append(out, s.BaseName+" AS "+s.Name)
	}
	return out
}

// goModVersion is the major.minor of go.mod's go line: the golang image tag.
func goModVersion(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}
