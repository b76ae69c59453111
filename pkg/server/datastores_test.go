package server

import (
	"strings"
	"testing"
)

func TestParseDatastoreOverride(t *testing.T) {
	for _, c := range []struct{ in, group, resource, err string }{
		{in: "/events=sqlite:///var/lib/harikube/db/events.db", resource: "events"},
		{in: "example.com/widgets=postgres://u:secret@db:5432/widgets", group: "example.com", resource: "widgets"},
		{in: "/events", err: "want GROUP/RESOURCE=DSN"},
		{in: "events=sqlite:///x.db", err: "is not GROUP/RESOURCE"},
		{in: "a/b/c=sqlite:///x.db", err: "is not GROUP/RESOURCE"},
		{in: "/Events=sqlite:///x.db", err: "lower case"},
		{in: "/events=mysql://db/x", err: `scheme "mysql" is not supported`},
		{in: "/events=sqlite://events.db", err: "must be absolute"},
		{in: "/events=sqlite://:memory:", err: "name a database file"},
		{in: "/events=events.db", err: "want sqlite:///absolute/path.db"},
	} {
		o, err := ParseDatastoreOverride(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || o.Resource.Group != c.group || o.Resource.Resource != c.resource {
			t.Errorf("%q: %+v %v", c.in, o, err)
		}
		if strings.Contains(o.String(), "secret") {
			t.Errorf("%q: String() shows the password: %s", c.in, o)
		}
	}
}

func TestPlanDatastores(t *testing.T) {
	parse := func(in ...string) []DatastoreOverride {
		var out []DatastoreOverride
		for _, s := range in {
			o, err := ParseDatastoreOverride(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, o)
		}
		return out
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name      string
		endpoint  string
		overrides []DatastoreOverride
		err       string
		stores    []string
	}{
		{name: "one file for two resources", overrides: parse("/events=sqlite:///a/e.db", "/leases=sqlite:///a/e.db", "x.io/w=postgres://u@h/w"),
			stores: []string{"default", "events,leases", "w.x.io"}},
		{name: "twice", overrides: parse("/events=sqlite:///a/e.db", "/events=sqlite:///a/f.db"), err: "given twice"},
		{name: "the default file", overrides: parse("/events=sqlite://" + dir + "/db/state.db"), err: "that is the default datastore"},
		{name: "the default database", endpoint: "postgres://u:p@db.example.com/k", overrides: parse("/events=postgres://other@DB.example.com:5432/k"), err: "that is the default datastore"},
		{name: "spelt two ways", overrides: parse("/events=sqlite:///a/e.db", "/leases=sqlite:///a/./e.db"), err: "name the same database differently"},
	} {
		d, err := planDatastores(Config{DataDir: dir, DatastoreEndpoint: c.endpoint, DatastoreOverrides: c.overrides})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var names []string
		for _, s := range d.all {
			names = append(names, s.name)
		}
		if strings.Join(names, " ") != strings.Join(c.stores, " ") {
			t.Errorf("%s: datastores %v, want %v", c.name, names, c.stores)
		}
	}
}
