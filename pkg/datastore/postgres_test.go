package datastore

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/harikube/harikube/tests/pgserver"
)

// One datastore writes to a PostgreSQL database at a time: a second one is
// refused with a message naming the database and what to do, and can start
// once the first has stopped.
func TestSecondWriterIsRefused(t *testing.T) {
	pg := pgserver.Start(t)
	dsn := pg.DSN()
	first := start(t, store{dir: t.TempDir(), endpoint: dsn}, nil)
	put(t, first.client, prefix+"ns/a", object("a", nil, ""))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second, err := Start(ctx, Options{DataDir: t.TempDir(), Endpoint: dsn})
	if err == nil {
		cancel()
		second.Wait()
		t.Fatal("a second datastore started on the same PostgreSQL database")
	}
	u, err2 := url.Parse(dsn)
	if err2 != nil {
		t.Fatal(err2)
	}
	database := strings.TrimPrefix(u.Path, "/")
	for _, want := range []string{`PostgreSQL database "` + database + `" is in use by another harikube datastore`, "connected from local socket", "Stop the other server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}

	// Another database of the same server is not locked.
	other := start(t, store{dir: t.TempDir(), endpoint: pg.DSN()}, nil)
	other.stop()

	first.stop()
	again := start(t, store{dir: t.TempDir(), endpoint: dsn}, nil)
	resp, err := again.client.Get(context.Background(), prefix+"ns/a")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("after the first server stopped: %v, %v", resp, err)
	}
}

// Servers older than PostgreSQL 14 are refused by name; the one installed
// here passes (every PostgreSQL test starts through the same check).
func TestPostgresVersionSupported(t *testing.T) {
	for _, c := range []struct {
		num     int
		version string
		ok      bool
	}{{130016, "13.16", false}, {140000, "14.0", true}, {150018, "15.18 (Debian 15.18-0+deb12u1)", true}, {170002, "17.2", true}} {
		err := versionSupported(c.num, c.version)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.version, err)
		}
		if err != nil && !strings.Contains(err.Error(), "PostgreSQL "+c.version+" is not supported: harikube needs PostgreSQL 14 or newer") {
			t.Errorf("%s: unclear error %v", c.version, err)
		}
	}
}
