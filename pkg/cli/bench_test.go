package cli

import "testing"

// TestQuickDefaults: --quick sets the flags it names, and a flag given on
// the command line keeps its value.
func TestQuickDefaults(t *testing.T) {
	c := newBenchCommand()
	if err := c.ParseFlags([]string{"--quick", "--budget", "2s", "--history-objects=0"}); err != nil {
		t.Fatal(err)
	}
	if err := applyQuickDefaults(c.Flags()); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"sizes":           "1000,10000",
		"budget":          "2s",
		"churn-objects":   "500",
		"mixed-duration":  "5s",
		"history-objects": "0",
	}
	for name, v := range want {
		if got := c.Flags().Lookup(name).Value.String(); got != v {
			t.Errorf("--%s = %q, want %q", name, got, v)
		}
	}
	if len(quickDefaults) != len(want) {
		t.Errorf("--quick sets %d flags, the test checks %d", len(quickDefaults), len(want))
	}
}
