package logging

import (
	"bytes"
	"errors"
	"flag"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

var (
	initTestFlags sync.Once
	testFlags     *flag.FlagSet
)

// klogFlag reads klog's global settings through a flag set of our own, so
// tests can restore them without depending on Setup having run.
func klogFlag(t *testing.T, name string) string {
	t.Helper()
	initTestFlags.Do(func() {
		testFlags = flag.NewFlagSet("test", flag.ContinueOnError)
		klog.InitFlags(testFlags)
	})
	return testFlags.Lookup(name).Value.String()
}

type captured struct {
	logrus *bytes.Buffer
	stderr string // path of the file standing in for os.Stderr
}

// capture runs Setup with logrus writing to a buffer and os.Stderr pointing
// at a file, and restores every global it touches when the test ends.
func capture(t *testing.T, debug bool) *captured {
	t.Helper()
	std := logrus.StandardLogger()
	out, formatter, level := std.Out, std.Formatter, std.GetLevel()
	oldVerbosity := verbosity.Load()
	flagsBefore := map[string]string{}
	for _, name := range []string{"v", "logtostderr", "alsologtostderr"} {
		flagsBefore[name] = klogFlag(t, name)
	}
	slogDefault, logWriter, logFlags := slog.Default(), log.Writer(), log.Flags()
	stderr := os.Stderr

	c := &captured{logrus: &bytes.Buffer{}, stderr: filepath.Join(t.TempDir(), "stderr")}
	f, err := os.Create(c.stderr)
	if err != nil {
		t.Fatal(err)
	}
	os.Stderr = f

	t.Cleanup(func() {
		klog.ClearLogger()
		klog.SetOutput(nil)
		for name, value := range flagsBefore {
			if err := testFlags.Set(name, value); err != nil {
				t.Errorf("restore klog -%s: %v", name, err)
			}
		}
		verbosity.Store(oldVerbosity)
		std.SetOutput(out)
		std.SetFormatter(formatter)
		std.SetLevel(level)
		slog.SetDefault(slogDefault)
		log.SetOutput(logWriter)
		log.SetFlags(logFlags)
		os.Stderr = stderr
		_ = f.Close()
	})

	Setup(debug)
	logrus.SetOutput(c.logrus)
	return c
}

// lines returns the logrus lines containing s.
func (c *captured) lines(s string) []string {
	var out []string
	for _, l := range strings.Split(c.logrus.String(), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// once asserts s appears in exactly one logrus line and returns it.
func (c *captured) once(t *testing.T, s string) string {
	t.Helper()
	l := c.lines(s)
	if len(l) != 1 {
		t.Fatalf("%q appears in %d logrus lines, want 1; output:\n%s", s, len(l), c.logrus)
	}
	return l[0]
}

func (c *captured) assertNoStderr(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile(c.stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 0 {
		t.Errorf("klog also wrote to stderr:\n%s", data)
	}
}

func assertContains(t *testing.T, line string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(line, p) {
			t.Errorf("line %q lacks %q", line, p)
		}
	}
}

func TestInfoS(t *testing.T) {
	c := capture(t, false)
	klog.InfoS("hello", "k", "v")
	line := c.once(t, "msg=hello")
	assertContains(t, line, "level=info", "k=v", `time="`)
	c.assertNoStderr(t)
}

func TestVerbosityNormal(t *testing.T) {
	c := capture(t, false)
	klog.V(1).InfoS("v1-dropped")
	klog.V(5).InfoS("v5-dropped")
	klog.V(0).InfoS("v0-kept")
	klog.Background().V(1).Info("contextual-dropped")
	if klog.V(1).Enabled() || klog.Background().V(1).Enabled() {
		t.Error("V(1) enabled without debug")
	}
	if out := c.logrus.String(); strings.Contains(out, "dropped") {
		t.Errorf("high-verbosity messages logged:\n%s", out)
	}
	assertContains(t, c.once(t, "v0-kept"), "level=info")
	c.assertNoStderr(t)
}

func TestVerbosityDebug(t *testing.T) {
	c := capture(t, true)
	klog.V(2).InfoS("v2-kept", "k", "v")
	klog.V(DebugVerbosity).InfoS("v4-kept")
	klog.V(DebugVerbosity + 1).InfoS("v5-dropped")
	klog.Background().V(DebugVerbosity).Info("contextual-kept")
	klog.Background().V(DebugVerbosity + 1).Info("contextual-dropped")
	logrus.Debug("logrus-debug")

	assertContains(t, c.once(t, "v2-kept"), "level=debug", "k=v")
	assertContains(t, c.once(t, "v4-kept"), "level=debug")
	assertContains(t, c.once(t, "contextual-kept"), "level=debug")
	c.once(t, "logrus-debug")
	if out := c.logrus.String(); strings.Contains(out, "dropped") {
		t.Errorf("messages above -v=%d logged:\n%s", DebugVerbosity, out)
	}
	c.assertNoStderr(t)
}

func TestErrorS(t *testing.T) {
	c := capture(t, false)
	klog.ErrorS(errors.New("boom"), "failed", "pod", "kube-system/x")
	assertContains(t, c.once(t, "msg=failed"), "level=error", "err=boom", "pod=kube-system/x")

	klog.Errorf("legacy error %d", 7)
	line := c.once(t, "legacy error 7")
	assertContains(t, line, "level=error")
	if strings.Contains(line, "err=") {
		t.Errorf("nil error rendered as a field: %q", line)
	}
	c.assertNoStderr(t)
}

// TestBenignUpstreamErrorsAreDebug: a clean start must not log errors.
func TestBenignUpstreamErrorsAreDebug(t *testing.T) {
	c := capture(t, false)
	klog.Errorf("The manifest file is empty, ignoring.")
	if out := c.logrus.String(); strings.Contains(out, "manifest file") {
		t.Errorf("a benign upstream message logged at the default level:\n%s", out)
	}
	c = capture(t, true)
	klog.Errorf("The manifest file is empty, ignoring.")
	assertContains(t, c.once(t, "The manifest file is empty"), "level=debug")
	c.assertNoStderr(t)
}

func TestPrintfStyle(t *testing.T) {
	c := capture(t, false)
	klog.Infof("x %d", 1)
	klog.Info("plain", " ", "info")
	klog.Warningf("careful %s", "now")
	assertContains(t, c.once(t, `msg="x 1"`), "level=info")
	c.once(t, `msg="plain info"`)
	c.once(t, `msg="careful now"`)
	c.assertNoStderr(t)
}

type panicky struct{}

func (*panicky) String() string { panic("nope") }

func TestKeyValues(t *testing.T) {
	c := capture(t, false)
	logger := klog.Background().WithName("ctrl").WithName("ns").WithValues("shared", 1)
	// Siblings derived from one parent must not see each other's values.
	a, b := logger.WithValues("a", true), logger.WithValues("b", "x")
	a.Info("from-a")
	b.Info("from-b")
	assertContains(t, c.once(t, "from-a"), "logger=ctrl/ns", "shared=1", "a=true")
	if l := c.once(t, "from-b"); strings.Contains(l, "a=true") {
		t.Errorf("sibling value leaked: %q", l)
	}

	var nilStringer *panicky
	klog.InfoS("odd", "lonely")
	klog.InfoS("weird", 42, "numeric-key", "obj", klog.KRef("ns", "name"),
		"list", []string{"p", "q"}, "bad", nilStringer, "multi", "line1\nline2")
	assertContains(t, c.once(t, "msg=odd"), `lonely="(MISSING)"`)
	line := c.once(t, "msg=weird")
	assertContains(t, line, "42=numeric-key", "obj=ns/name", `list="[\"p\",\"q\"]"`, "bad=\"<panic: nope>\"", `multi="line1\nline2"`)
}

func TestStdlibAndSlog(t *testing.T) {
	c := capture(t, false)
	slog.Info("via-slog", "k", "v")
	log.Print("via-log")
	assertContains(t, c.once(t, "via-slog"), "level=info", "k=v")
	c.once(t, "via-log")
	c.assertNoStderr(t)
}

// TestReapplyAfterUpstreamConfig runs the real upstream logging setup that
// the apiserver performs, which replaces klog's logger, and checks that
// Reapply takes klog (and slog) back without duplicating messages.
func TestReapplyAfterUpstreamConfig(t *testing.T) {
	c := capture(t, true)
	t.Cleanup(func() {
		if err := logsapi.ResetForTest(nil); err != nil {
			t.Error(err)
		}
	})
	if err := logsapi.ValidateAndApply(logsapi.NewLoggingConfiguration(), nil); err != nil {
		t.Fatal(err)
	}
	klog.InfoS("while-upstream")
	if len(c.lines("while-upstream")) != 0 {
		t.Fatal("upstream configuration unexpectedly kept routing to logrus; this test no longer proves anything")
	}

	Reapply()
	Reapply() // idempotent: still exactly one copy of each message
	klog.InfoS("after-reapply")
	klog.V(DebugVerbosity).InfoS("debug-after-reapply")
	slog.Info("slog-after-reapply")
	c.once(t, "msg=after-reapply")
	c.once(t, "debug-after-reapply")
	c.once(t, "slog-after-reapply")

	data, err := os.ReadFile(c.stderr)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "after-reapply") {
		t.Errorf("message also reached stderr after Reapply:\n%s", data)
	}
}
