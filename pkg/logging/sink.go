package logging

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
)

const (
	// errKey matches klog's key, so upstream log lines keep their familiar
	// shape.
	errKey = "err"
	// loggerKey carries the logr name chain (e.g. "controller/namespace").
	loggerKey = "logger"
	// missingValue marks a key logged without a value, as klog does.
	missingValue = "(MISSING)"
)

// sink is a logr.LogSink writing to logrus. It is immutable: WithName and
// WithValues return copies, because derived loggers are shared between
// goroutines.
type sink struct {
	logger *logrus.Logger
	name   string
	values []any
}

var _ logr.LogSink = (*sink)(nil)

func (s *sink) Init(logr.RuntimeInfo) {}

// Enabled lets callers skip building messages nobody will see: V>0 maps to
// logrus Debug, so both the configured verbosity and the logrus level must
// allow it.
func (s *sink) Enabled(level int) bool {
	if level > int(verbosity.Load()) {
		return false
	}
	if level > 0 {
		return s.logger.IsLevelEnabled(logrus.DebugLevel)
	}
	return s.logger.IsLevelEnabled(logrus.InfoLevel)
}

func (s *sink) Info(level int, msg string, keysAndValues ...any) {
	entry := s.logger.WithFields(s.fields(keysAndValues))
	if level > 0 {
		entry.Debug(msg)
		return
	}
	entry.Info(msg)
}

// notErrors are messages upstream code logs as errors although nothing is
// wrong. component-base logs this one at every start of the apiserver and
// the controller manager unless a metrics label allow-list is configured
// (and "empty allow-list mapping supplied" if an empty one is).
var notErrors = map[string]bool{
	"The manifest file is empty, ignoring.": true,
}

func (s *sink) Error(err error, msg string, keysAndValues ...any) {
	if err == nil && notErrors[msg] {
		s.logger.WithFields(s.fields(keysAndValues)).Debug(msg)
		return
	}
	if !s.logger.IsLevelEnabled(logrus.ErrorLevel) {
		return
	}
	fields := s.fields(keysAndValues)
	// klog.Error/Errorf arrive with a nil error; an "err=<nil>" field would
	// only be noise.
	if err != nil {
		fields[errKey] = stringify(err)
	}
	s.logger.WithFields(fields).Error(msg)
}

func (s *sink) WithValues(keysAndValues ...any) logr.LogSink {
	c := *s
	// Clip forces append to copy, so siblings derived from the same parent
	// never overwrite each other's values.
	c.values = append(slices.Clip(s.values), keysAndValues...)
	return &c
}

func (s *sink) WithName(name string) logr.LogSink {
	c := *s
	if c.name == "" {
		c.name = name
	} else {
		c.name += "/" + name
	}
	return &c
}

// fields stringifies only when a message is actually emitted, so
// WithValues on hot paths costs an append and nothing more.
func (s *sink) fields(keysAndValues []any) logrus.Fields {
	f := make(logrus.Fields, (len(s.values)+len(keysAndValues))/2+1)
	if s.name != "" {
		f[loggerKey] = s.name
	}
	addPairs(f, s.values)
	addPairs(f, keysAndValues)
	return f
}

// addPairs stores values as strings: logrus rejects some types (funcs) and
// would call arbitrary String methods later, outside our panic protection.
func addPairs(f logrus.Fields, kv []any) {
	for i := 0; i < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			key = stringify(kv[i])
		}
		if i+1 >= len(kv) {
			f[key] = missingValue
			continue
		}
		f[key] = stringify(kv[i+1])
	}
}

// stringify renders a value the way klog's text format would: Stringer and
// error via their methods, logr.Marshaler via its log representation, other
// composite values as JSON. Panicking methods (e.g. on nil receivers) must
// not take the process down from inside a log call.
func stringify(v any) (s string) {
	defer func() {
		if r := recover(); r != nil {
			s = fmt.Sprintf("<panic: %v>", r)
		}
	}()
	switch x := v.(type) {
	case nil:
		return "<nil>"
	case string:
		return x
	case fmt.Stringer:
		return x.String()
	case error:
		return x.Error()
	case logr.Marshaler:
		v = x.MarshalLog()
		if str, ok := v.(string); ok {
			return str
		}
	case []byte:
		return string(x)
	case bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, uintptr, float32, float64, complex64, complex128:
		return fmt.Sprint(x)
	}
	if b, err := json.Marshal(v); err == nil {
		return string(b)
	}
	return fmt.Sprintf("%+v", v)
}
