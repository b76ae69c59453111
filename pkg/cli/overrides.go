package cli

import (
	"strings"

	"github.com/harikube/harikube/pkg/server"
)

// overridesFlag is --datastore-override, repeatable; each value is checked
// when the flag is parsed.
type overridesFlag struct{ list *[]server.DatastoreOverride }

func (f overridesFlag) String() string {
	if f.list == nil {
		return ""
	}
	var s []string
	for _, o := range *f.list {
		s = append(s, o.String())
	}
	return strings.Join(s, ",")
}

func (f overridesFlag) Set(s string) error {
	o, err := server.ParseDatastoreOverride(s)
	if err != nil {
		return err
	}
	*f.list = append(*f.list, o)
	return nil
}

func (overridesFlag) Type() string { return "GROUP/RESOURCE=DSN" }

const overridesUsage = "put a resource in a datastore of its own, as GROUP/RESOURCE=DSN (repeatable; core group empty): " +
	"/events=sqlite:///var/lib/harikube/db/events.db, example.com/widgets=postgres://user:password@host:5432/widgets"
