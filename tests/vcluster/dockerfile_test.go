package vcluster

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/harikube/harikube/tests/vclusterimage"
)

// dockerVersion is the VERSION build argument the test passes, as
// `docker build --build-arg VERSION=...` would.
const dockerVersion = "v0.0.0-dockerfile-test"

// dockerDefaultPath is the PATH docker gives a RUN when the image sets none.
const dockerDefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// TestDockerfile builds the image the Dockerfile describes without a
// container daemon and compares it with the image scripts/build-image makes,
// which the other tests run. The Dockerfile is parsed with BuildKit's own
// parser and its instructions are run as docker would run them: each stage's
// RUN lines by /bin/sh in a chroot, the build stage's on this machine's Go
// toolchain standing in for the golang image (with the source at /src and an
// empty /out), the final stage's on the image's static busybox standing in
// for the busybox image. Then the final stage's /kubernetes must be the
// tested image's, and its entrypoint, command, PATH and labels the ones
// scripts/build-image writes.
func TestDockerfile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the Dockerfile's stages run in chroots (CI runs as root)")
	}
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

	// The build stage, in a chroot of this machine with the source at /src.
	stageRoot := chrootDir(t)
	runStage(t, build, stageRoot, []string{"PATH=" + filepath.Dir(goTool(t)) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, root)

	// The final stage, in a chroot holding only the image's busybox.
	imageRoot := chrootDir(t)
	cmd := exec.Command("cp", "-a", filepath.Join(b.RootFS, "bin"), filepath.Join(imageRoot, "bin"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox for the image stage: %v\n%s", err, out)
	}
	for _, c := range final.Commands {
		if cp, ok := c.(*instructions.CopyCommand); ok {
			if cp.From != build.Name || len(cp.SourcePaths) != 1 {
				t.Fatalf("%s: want one file copied from the build stage", cp)
			}
			dest := filepath.Join(imageRoot, cp.DestPath)
			if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("cp", "-a", filepath.Join(stageRoot, cp.SourcePaths[0]), dest).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", cp, err, out)
			}
		}
	}
	env := runStage(t, final, imageRoot, []string{dockerDefaultPath}, "")

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
		t.Fatal(err)
	}
	cf, err := im.ConfigFile()
	if err != nil {
		t.Fatal(err)
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

// runStage runs a stage's instructions as docker does, its RUN lines by
// /bin/sh in a chroot of dir, and returns the stage's environment. With a
// build context, dir gets this machine's system directories, Go caches,
// /dev and /proc (the golang image's part), and the context mounted where
// WORKDIR and COPY put it.
func runStage(t *testing.T, stage instructions.Stage, dir string, env []string, context string) []string {
	t.Helper()
	workdir := "/"
	var mounts []string // "<host dir>=<dir in the chroot>"
	if context != "" {
		mounts, env = machineMounts(t, dir, env)
	}
	for _, c := range stage.Commands {
		switch c := c.(type) {
		case *instructions.WorkdirCommand:
			workdir = c.Path
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
					t.Fatalf("%s: the test passes only VERSION", c)
				}
				env = setEnv(env, kv.Key, dockerVersion)
			}
		case *instructions.CopyCommand:
			if c.From != "" {
				continue // the caller copies from other stages
			}
			for _, src := range c.SourcePaths {
				if _, err := os.Stat(filepath.Join(context, src)); err != nil {
					t.Fatalf("%s: %v", c, err)
				}
			}
			if m := context + "=" + workdir; !slices.Contains(mounts, m) {
				mounts = append(mounts, m)
			}
		case *instructions.RunCommand:
			if !c.PrependShell || len(c.CmdLine) != 1 {
				t.Fatalf("%s: want a shell-form RUN", c)
			}
			runInChroot(t, dir, mounts, env, workdir, c.CmdLine[0])
		case *instructions.LabelCommand, *instructions.EntrypointCommand, *instructions.CmdCommand:
		default:
			t.Fatalf("the test does not run %T (%s)", c, c)
		}
	}
	return env
}

// runInChroot runs script with /bin/sh -c in a chroot of dir, in a mount
// namespace of its own in which each "host=dir" mount is bound; the
// namespace, and with it every mount, ends with the command.
func runInChroot(t *testing.T, dir string, mounts, env []string, workdir, script string) {
	t.Helper()
	setup := `set -e; root=$1; shift
for m in "$@"; do
	host=${m%%=*}; in=$root${m#*=}
	mkdir -p "$in"; mount --rbind "$host" "$in"
done
mkdir -p "$root/tmp"
exec chroot "$root" /bin/sh -c 'cd "$0" && eval "$1"' "$WORKDIR" "$SCRIPT"`
	args := append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", setup, "sh", dir}, mounts...)
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(append([]string{}, env...), "WORKDIR="+workdir, "SCRIPT="+script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("RUN %s: %v\n%s", script, err, out)
	}
}

// machineMounts gives dir this machine's /usr, /etc, /root, /dev, /proc and
// Go caches (its top-level links, as on a merged-/usr system, are made as
// links), and adds the go environment to env.
func machineMounts(t *testing.T, dir string, env []string) (mounts, _ []string) {
	t.Helper()
	for _, d := range []string{"usr", "etc", "root", "dev", "proc", "bin", "sbin", "lib", "lib64"} {
		fi, err := os.Lstat("/" + d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink("/" + d)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, d)); err != nil {
				t.Fatal(err)
			}
		default:
			mounts = append(mounts, "/"+d+"=/"+d)
		}
	}
	out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPROXY").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	values := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, key := range []string{"GOCACHE", "GOMODCACHE", "GOPROXY"} {
		env = setEnv(env, key, values[i])
		if key != "GOPROXY" {
			mounts = append(mounts, values[i]+"="+values[i])
		}
	}
	return mounts, setEnv(env, "HOME", "/root")
}

// chrootDir is a temporary directory removed at the end of the test, but
// only when nothing is mounted under it: removing a directory through a
// leaked bind mount would remove the host's files.
func chrootDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(workDir, "dockerfile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m := mountsUnder(t, dir); len(m) > 0 {
			t.Errorf("left %s in place: mounts under it remain: %v", dir, m)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func mountsUnder(t *testing.T, dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	return out
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
		path := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(path)
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

// goTool is the go command that builds the stage, under /usr as the
// chroot sees it.
func goTool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	if path, err = filepath.EvalSymlinks(path); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(path, "/usr/") {
		t.Skipf("the build stage's chroot holds /usr; go is at %s", path)
	}
	return path
}
