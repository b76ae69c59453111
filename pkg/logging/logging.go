// Package logging gives the whole process one log format: logrus. The
// embedded upstream components log through klog, so klog is pointed at a
// logr sink that forwards into logrus; slog and the standard log package are
// routed there as well.
package logging

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// DebugVerbosity is the klog -v level used in debug mode. It stays below the
// levels at which client-go logs every request (6), its headers (7) and its
// bodies (8): those drown the useful messages and bodies may carry secrets.
const DebugVerbosity = 4

var (
	// verbosity is read on every klog call by the sink, so it is atomic
	// rather than guarded by mu.
	verbosity atomic.Int32

	mu        sync.Mutex
	klogFlags *flag.FlagSet
)

// Setup configures logrus (text formatter with full timestamps, to stderr) and routes klog into it.
// debug=true sets logrus Debug level and klog verbosity 4 (klog -v=4); otherwise Info and klog -v=0 (upstream components are chatty at higher levels).
func Setup(debug bool) {
	logrus.SetFormatter(&logrus.TextFormatter{
		FullTimestamp: true,
		// Millisecond precision orders concurrent controller and apiserver
		// events, which RFC 3339's whole seconds cannot.
		TimestampFormat: "2006-01-02T15:04:05.000Z07:00",
	})
	logrus.SetOutput(os.Stderr)
	if debug {
		logrus.SetLevel(logrus.DebugLevel)
		verbosity.Store(DebugVerbosity)
	} else {
		logrus.SetLevel(logrus.InfoLevel)
		verbosity.Store(0)
	}
	Reapply()
}

// Reapply re-installs the klog-to-logrus routing and the verbosity chosen by
// Setup. The upstream servers apply their own logging configuration
// (component-base logs/api/v1 ValidateAndApply), which replaces klog's
// logger and -v; call Reapply after they did. Calling it repeatedly is
// harmless.
func Reapply() {
	mu.Lock()
	defer mu.Unlock()

	if klogFlags == nil {
		// A private flag set: registering klog's flags on flag.CommandLine
		// would clash with components that do so themselves, and klog
		// forbids registering twice on the same set.
		klogFlags = flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(klogFlags)
	}
	// klog checks its own -v before handing V(n) calls to the sink, so it
	// must agree with the sink's Enabled or high-V messages get lost.
	mustSet("v", strconv.Itoa(int(verbosity.Load())))
	// With a logger installed klog writes nowhere else. These settings only
	// matter if someone clears the logger: they stop klog from creating log
	// files in the temp directory, while errors still reach stderr through
	// klog's stderr threshold rather than vanishing.
	mustSet("logtostderr", "false")
	mustSet("alsologtostderr", "false")
	klog.SetOutput(io.Discard)

	logger := logr.New(&sink{logger: logrus.StandardLogger()})
	// ContextualLogger(true) hands our logger directly to code using
	// klog.FromContext/klog.Background instead of wrapping it in a
	// klog-backed shim, saving a round trip through klog per call.
	klog.SetLoggerWithOptions(logger, klog.ContextualLogger(true))
	// ValidateAndApply also points slog (and with it the standard library's
	// log package) at the logger it installed, which would keep writing
	// klog-formatted lines to stderr after we take klog back.
	slog.SetDefault(slog.New(logr.ToSlogHandler(logger)))
}

// mustSet panics because the flag names are fixed and a failure means klog
// changed incompatibly, which tests catch.
func mustSet(name, value string) {
	if err := klogFlags.Set(name, value); err != nil {
		panic("logging: set klog flag " + name + ": " + err.Error())
	}
}
