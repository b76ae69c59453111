package bench

import (
	"fmt"
	"strings"
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
}

// Modes are all modes, in report order; the first is the baseline ratios
// are taken against.
var Modes = []Mode{
	{Name: "harikube", Description: "defaults: selector pushdown on, custom resources served uncached from the indexed datastore"},
	{Name: "no-pushdown", Description: "--selector-pushdown=false: same cache policy, the datastore returns all rows and the apiserver filters",
		ServerArgs: []string{"--selector-pushdown=false"}},
	{Name: "upstream", Description: "--selector-pushdown=false --watch-cache-custom-resources=true: upstream defaults (watch cache, no pushdown)",
		ServerArgs: []string{"--selector-pushdown=false", "--watch-cache-custom-resources=true"}},
	{Name: "etcd", Description: "a real etcd behind the same apiserver, upstream defaults (watch cache, no pushdown)",
		ServerArgs: []string{"--selector-pushdown=false", "--watch-cache-custom-resources=true"}, Etcd: true},
	{Name: "kine-stock", Description: "--unindexed-datastore: Kine's own SQLite driver without index tables, custom resources uncached",
		ServerArgs: []string{"--unindexed-datastore"}},
	{Name: "postgres", Description: "harikube defaults with the datastore on PostgreSQL (a private server on this machine)", Postgres: true},
}

// ParseModes turns a comma-separated list of mode names ("all" for every
// mode) into modes, in the order given.
func ParseModes(list string) ([]Mode, error) {
	if strings.TrimSpace(list) == "" || list == "all" {
		return Modes, nil
	}
	var out []Mode
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		m, ok := modeByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown mode %q (modes: %s)", name, strings.Join(ModeNames(Modes), ", "))
		}
		if seen[name] {
			return nil, fmt.Errorf("mode %q given twice", name)
		}
		seen[name] = true
		out = append(out, m)
	}
	return out, nil
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
	for _, m := range Modes {
		if m.Name == name {
			return m, true
		}
	}
	return Mode{}, false
}
