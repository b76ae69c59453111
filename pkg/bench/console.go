package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// console writes the bench's progress; on a terminal the progress line is
// rewritten in place every second, elsewhere it is printed every ten.
type console struct {
	mu  sync.Mutex
	w   io.Writer
	tty bool
}

func newConsole(w io.Writer) *console {
	f, ok := w.(*os.File)
	tty := false
	if ok {
		if info, err := f.Stat(); err == nil {
			tty = info.Mode()&os.ModeCharDevice != 0
		}
	}
	return &console{w: w, tty: tty}
}

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, format, args...)
}

// progress shows line() every second until the returned function is called.
func (c *console) progress(line func() string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-done:
				if c.tty {
					c.printf("\r\033[K")
				}
				return
			case <-tick.C:
				switch {
				case c.tty:
					c.printf("\r\033[K%s", line())
				case n%10 == 0:
					c.printf("%s\n", line())
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
