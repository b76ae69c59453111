package bench

import (
	"fmt"
	"strings"

	"github.com/harikube/harikube/pkg/pglocal"
)

// Mode is one way of running the control plane that the bench compares.
type Mode struct {
	Name string
	// Description is one line for the report.
	Description string
	// ServerArgs are added to `harikube server`.
	ServerArgs []string
	// Etcd puts a real etcd (a separate helper process) behind the apiserver.
	Etcd bool
	// Postgres puts the datastore on a private PostgreSQL server.
	Postgres bool
	// CRDAnnotations are set on the widget CRD when it is created.
	CRDAnnotations map[string]string
}

// Modes are all modes, in report order; the first is the baseline ratios
// are taken against.
var Modes = []Mode{
	{Name: "harikube", Description: "defaults: selector pushdown on, custom resources served uncached from the indexed datastore"},
	{Name: "no-pushdown", Description: "--selector-pushdown=false: same cache policy, the datastore returns all rows and the apiserver filters",
		ServerArgs: []string{"--selector-pushdown=false"}},
	{Name: "upstream", Description: "--selector-pushdown=false --watch-cache-custom-resources=true --shared-etcd-client=false: upstream defaults (watch cache, no pushdown, an etcd client per resource)",
		ServerArgs: []string{"--selector-pushdown=false", "--watch-cache-custom-resources=true", "--shared-etcd-client=false"}},
	{Name: "etcd", Description: "a real etcd behind the same apiserver, upstream defaults (watch cache, no pushdown, an etcd client per resource)",
		ServerArgs: []string{"--selector-pushdown=false", "--watch-cache-custom-resources=true", "--shared-etcd-client=false"}, Etcd: true},
	{Name: "kine-stock", Description: "--unindexed-datastore: Kine's own SQLite driver without index tables, custom resources uncached",
		ServerArgs: []string{"--unindexed-datastore"}},
	{Name: "postgres", Description: "harikube defaults with the datastore on PostgreSQL (a private server on this machine)", Postgres: true},
}

// Unavailable says why the mode cannot run on this machine; nil means it can.
func (m Mode) Unavailable() error {
	if m.Postgres {
		return pglocal.Available()
	}
	return nil
}

// ParseModes turns a comma-separated list of mode names into modes, in the
// order given. "all" is every mode this machine can run, and skipped says
// why the others were left out; a mode named explicitly that cannot run is
// an error, before anything has been measured.
func ParseModes(list string) (modes []Mode, skipped []string, err error) {
	if strings.TrimSpace(list) == "" || list == "all" {
		for _, m := range Modes {
			if err := m.Unavailable(); err != nil {
				skipped = append(skipped, fmt.Sprintf("%s: %v", m.Name, err))
				continue
			}
			modes = append(modes, m)
		}
		return modes, skipped, nil
	}
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		m, ok := modeByName(name)
		if !ok {
			return nil, nil, fmt.Errorf("unknown mode %q (modes: %s)", name, strings.Join(ModeNames(Modes), ", "))
		}
		if seen[name] {
			return nil, nil, fmt.Errorf("mode %q given twice", name)
		}
		if err := m.Unavailable(); err != nil {
			return nil, nil, fmt.Errorf("mode %s cannot run here: %w", name, err)
		}
		seen[name] = true
		modes = append(modes, m)
	}
	return modes, nil, nil
}

// ModeNames lists the names of modes.
func ModeNames(modes []Mode) []string {
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = m.Name
	}
	return names
}

func modeByName(name string) (Mode, bool) {
	for _, m := range append(append([]Mode(nil), Modes...), OptionalModes...) {
		if m.Name == name {
			return m, true
		}
	}
	return Mode{}, false
}
