package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/k3s-io/kine/pkg/tls"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/harikube/harikube/pkg/datastore"
	"github.com/harikube/harikube/pkg/index"
)

// DatastoreOverride routes one resource to a datastore of its own
// (--datastore-override GROUP/RESOURCE=DSN).
type DatastoreOverride struct {
	Resource schema.GroupResource
	Endpoint string
}

// String is the flag's notation, group/resource=DSN, with credentials hidden.
func (o DatastoreOverride) String() string {
	return o.Resource.Group + "/" + o.Resource.Resource + "=" + redactEndpoint(o.Endpoint)
}

// ParseDatastoreOverride reads GROUP/RESOURCE=DSN, upstream's group/resource
// notation of --etcd-servers-overrides (core group empty: /events).
func ParseDatastoreOverride(s string) (DatastoreOverride, error) {
	const example = "e.g. /events=sqlite:///var/lib/harikube/db/events.db or example.com/widgets=postgres://user:password@host:5432/widgets"
	res, dsn, ok := strings.Cut(s, "=")
	if !ok {
		return DatastoreOverride{}, fmt.Errorf("--datastore-override %q: want GROUP/RESOURCE=DSN, %s", redactEndpoint(s), example)
	}
	group, resource, ok := strings.Cut(res, "/")
	if !ok || resource == "" || strings.Contains(resource, "/") || strings.ContainsAny(res, "# ;,") {
		return DatastoreOverride{}, fmt.Errorf("--datastore-override %q: %q is not GROUP/RESOURCE (the core group is empty: /events; a custom resource: example.com/widgets)", redactEndpoint(s), res)
	}
	if resource != strings.ToLower(resource) || group != strings.ToLower(group) {
		return DatastoreOverride{}, fmt.Errorf("--datastore-override %q: resources and groups are lower case, as in the API's URLs (/events, example.com/widgets)", redactEndpoint(s))
	}
	o := DatastoreOverride{Resource: schema.GroupResource{Group: group, Resource: resource}, Endpoint: dsn}
	if _, err := databaseIdentity(dsn); err != nil {
		return DatastoreOverride{}, fmt.Errorf("--datastore-override %s: %w", o, err)
	}
	return o, nil
}

// databaseIdentity names the database a DSN opens, so that two spellings of
// one database are found to be the same: an absolute SQLite path, or a
// PostgreSQL host, port and database.
func databaseIdentity(dsn string) (string, error) {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return "", fmt.Errorf("datastore %q: want sqlite:///absolute/path.db or postgres://user:password@host:5432/database", redactEndpoint(dsn))
	}
	switch scheme {
	case "sqlite":
		path := sqlitePath(rest)
		_, query, _ := strings.Cut(rest, "?")
		if path == "" || path == ":memory:" || strings.Contains(query, "mode=memory") {
			return "", fmt.Errorf("datastore %q: name a database file, e.g. sqlite:///var/lib/harikube/db/events.db", dsn)
		}
		if !filepath.IsAbs(path) {
			return "", fmt.Errorf("datastore %q: the SQLite path must be absolute (sqlite:///var/lib/harikube/db/events.db)", dsn)
		}
		return "sqlite:" + filepath.Clean(path), nil
	case "postgres", "postgresql":
		u, err := url.Parse("postgres://" + rest)
		if err != nil {
			return "", fmt.Errorf("datastore %s: not a PostgreSQL URL", redactEndpoint(dsn))
		}
		port := u.Port()
		if port == "" {
			port = "5432"
		}
		db := strings.TrimPrefix(u.Path, "/")
		if db == "" {
			db = "kubernetes"
		}
		host := u.Hostname()
		if host == "" {
			host = u.Query().Get("host") // a unix socket directory
		}
		return "postgres:" + strings.ToLower(host) + ":" + port + "/" + db, nil
	}
	return "", fmt.Errorf("datastore scheme %q is not supported: use sqlite:///absolute/path.db or postgres://user:password@host:5432/database", scheme)
}

// sqlitePath is the file of a sqlite:// DSN without its scheme.
func sqlitePath(dsn string) string {
	path, _, _ := strings.Cut(strings.TrimPrefix(dsn, "file:"), "?")
	return path
}

// store is one in-process datastore and the resources routed to it.
type store struct {
	name      string // metrics label and messages: "default", or its resources
	endpoint  string // the DSN, "" for SQLite in the data directory
	identity  string
	resources []schema.GroupResource
	registry  *index.Registry
	ds        *datastore.Datastore
}

func (s *store) describe() string {
	if s.ds != nil && s.ds.DatabasePath != "" {
		return "SQLite " + s.ds.DatabasePath
	}
	if path, ok := strings.CutPrefix(s.identity, "sqlite:"); ok {
		return "SQLite " + path
	}
	return redactEndpoint(s.endpoint)
}

// datastores are the process's datastores: the default one and one per
// distinct --datastore-override DSN.
type datastores struct {
	all        []*store // the default first
	byResource map[schema.GroupResource]*store
	byServers  map[string]*store // etcd endpoint → store, once started

	mu   sync.Mutex
	seen map[schema.GroupResource]bool // resources whose storage route() configured
}

func (d *datastores) primary() *store { return d.all[0] }

// planDatastores checks the overrides against each other and the default
// datastore before anything starts.
func planDatastores(cfg Config) (*datastores, error) {
	def := &store{name: "default", endpoint: cfg.DatastoreEndpoint, identity: "sqlite:" + filepath.Clean(datastore.DatabasePath(cfg.DataDir))}
	if cfg.DatastoreEndpoint != "" {
		// Checked as before by datastore.Start, which also takes a relative
		// SQLite path: only compared here.
		def.identity = cfg.DatastoreEndpoint
		if scheme, rest, _ := strings.Cut(cfg.DatastoreEndpoint, "://"); scheme == "sqlite" {
			if abs, err := filepath.Abs(sqlitePath(rest)); err == nil {
				def.identity = "sqlite:" + abs
			}
		} else if id, err := databaseIdentity(cfg.DatastoreEndpoint); err == nil {
			def.identity = id
		}
	}
	d := &datastores{all: []*store{def}, byResource: map[schema.GroupResource]*store{}}
	if len(cfg.DatastoreOverrides) == 0 {
		return d, nil
	}
	if cfg.UnindexedDatastore {
		return nil, errors.New("--datastore-override needs the indexing datastore (not --unindexed-datastore)")
	}
	byIdentity := map[string]*store{}
	for _, o := range cfg.DatastoreOverrides {
		if prev, ok := d.byResource[o.Resource]; ok {
			return nil, fmt.Errorf("--datastore-override: %s/%s is given twice (%s and %s); give each resource once", o.Resource.Group, o.Resource.Resource, redactEndpoint(prev.endpoint), redactEndpoint(o.Endpoint))
		}
		id, err := databaseIdentity(o.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("--datastore-override %s: %w", o, err)
		}
		if id == def.identity {
			return nil, fmt.Errorf("--datastore-override %s: that is the default datastore (%s); leave the resource out to keep it there", o, def.describe())
		}
		s, ok := byIdentity[id]
		if !ok {
			s = &store{endpoint: o.Endpoint, identity: id}
			byIdentity[id] = s
			d.all = append(d.all, s)
		} else if s.endpoint != o.Endpoint {
			return nil, fmt.Errorf("--datastore-override %s and %s name the same database differently; write its DSN the same way for every resource it holds", o, redactEndpoint(s.endpoint))
		}
		s.resources = append(s.resources, o.Resource)
		d.byResource[o.Resource] = s
	}
	for _, s := range d.all[1:] {
		names := make([]string, len(s.resources))
		for i, r := range s.resources {
			names[i] = r.String()
		}
		sort.Strings(names)
		s.name = strings.Join(names, ",")
	}
	return d, nil
}

// overrideSocket is where a datastore other than the default one serves
// the etcd API, named by its database (10 bytes longer than kine.sock: a
// data directory too long for it is refused, naming the limit).
func overrideSocket(dataDir, identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return filepath.Join(dataDir, "kine-"+hex.EncodeToString(sum[:4])+".sock")
}

// start starts every datastore; the ones started are in d (for Wait) even
// when one fails.
func (d *datastores) start(ctx context.Context, cfg Config, metrics prometheus.Registerer) error {
	d.byServers = map[string]*store{}
	for i, s := range d.all {
		opts := datastore.Options{
			DataDir:           cfg.DataDir,
			Endpoint:          s.endpoint,
			Registry:          index.NewRegistry(),
			Unindexed:         cfg.UnindexedDatastore,
			MetricsRegisterer: metrics,
			KineArgs:          cfg.DatastoreTLS.kineArgs(),
			Name:              s.name,
		}
		if i > 0 {
			opts.Listener = "unix://" + overrideSocket(cfg.DataDir, s.identity)
		}
		ds, err := datastore.Start(ctx, opts)
		if err != nil {
			if i > 0 {
				return fmt.Errorf("datastore of %s: %w", s.name, err)
			}
			return err
		}
		s.ds, s.registry = ds, opts.Registry
		d.byServers[ds.Endpoint] = s
	}
	return nil
}

// failed delivers the first failure of a started datastore
// (datastore.Datastore.Failed), until ctx ends.
func (d *datastores) failed(ctx context.Context) <-chan error {
	out := make(chan error, 1)
	for _, s := range d.all {
		if s.ds == nil || s.ds.Failed() == nil {
			continue
		}
		go func() {
			select {
			case err := <-s.ds.Failed():
				select {
				case out <- fmt.Errorf("datastore %s: %w", s.name, err):
				default:
				}
			case <-ctx.Done():
			}
		}()
	}
	return out
}

// Wait blocks until every started datastore has shut down.
func (d *datastores) Wait() {
	for _, s := range d.all {
		if s.ds != nil {
			s.ds.Wait()
		}
	}
}

// etcdServersOverrides is the kube-apiserver's --etcd-servers-overrides
// for the started datastores (group/resource#servers).
func (d *datastores) etcdServersOverrides() []string {
	var out []string
	for _, s := range d.all[1:] {
		for _, r := range s.resources {
			out = append(out, r.Group+"/"+r.Resource+"#"+s.ds.Endpoint)
		}
	}
	sort.Strings(out)
	return out
}

// routeOf is the datastore the flags route a key prefix to, given the
// resources recorded under it: an override of any of them (resources that
// share keys, such as events and events.k8s.io's events, share a datastore),
// else the default one.
func (d *datastores) routeOf(resources []string) *store {
	for _, r := range resources {
		if s, ok := d.byResource[schema.ParseGroupResource(r)]; ok {
			return s
		}
	}
	return d.primary()
}

// recordedAs is how the default datastore records a datastore: "" for
// itself, else its DSN without the password (credentials are not kept).
func (s *store) recordedAs(primary *store) string {
	if s == primary {
		return ""
	}
	u, err := url.Parse(s.endpoint)
	if err != nil || u.User == nil {
		return s.endpoint
	}
	u.User = url.User(u.User.Username())
	return u.String()
}

// checkRoutes refuses a start whose routing would hide objects: a datastore
// that holds live objects of a resource the flags now send elsewhere (an
// override dropped, changed or added). A datastore no longer in the flags is
// opened to count them: a SQLite file by its path, PostgreSQL by its DSN
// without the password (so with ~/.pgpass, PGPASSWORD or a certificate).
// Records of a datastore found empty are dropped.
func (d *datastores) checkRoutes(ctx context.Context, cfg Config) error {
	primary := d.primary()
	routes, err := primary.ds.Routes(ctx)
	if err != nil {
		return err
	}
	started := map[string]*store{}
	for _, s := range d.all {
		started[s.identity] = s
	}
	var problems []string
	for _, r := range routes {
		old := primary
		if r.Datastore != "" {
			id, err := databaseIdentity(r.Datastore)
			if err != nil {
				return fmt.Errorf("recorded datastore %s: %w", r.Datastore, err)
			}
			if old = started[id]; old == nil {
				old = &store{name: "of " + strings.Join(r.Resources, ","), endpoint: r.Datastore, identity: id}
			}
		}
		target := d.routeOf(r.Resources)
		if target == old {
			continue
		}
		var n int64
		if old.ds != nil {
			n, err = old.ds.LiveKeys(ctx, r.Prefix)
		} else {
			n, err = datastore.LiveKeysAt(ctx, r.Datastore, cfg.DatastoreTLS.kine(), r.Prefix)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("datastore %s (%s) held %s (keys %s), which the flags now route to datastore %s; it cannot be checked for objects left: %v",
				old.name, old.describe(), strings.Join(r.Resources, " and "), r.Prefix, target.name, err))
			continue
		}
		if n == 0 {
			if err := primary.ds.ForgetRoute(ctx, r.Datastore, r.Prefix); err != nil {
				return err
			}
			continue
		}
		problems = append(problems, fmt.Sprintf("datastore %s (%s) holds %d objects of %s (keys %s), which the flags now route to datastore %s (%s)",
			old.name, old.describe(), n, strings.Join(r.Resources, " and "), r.Prefix, target.name, target.describe()))
	}
	unrecorded, err := d.checkUnrecorded(ctx, routes)
	if err != nil {
		return err
	}
	problems = append(problems, unrecorded...)
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("refusing to start: the API would no longer show these objects:\n  %s\n"+
		"start with the --datastore-override flags that stored them; to move them, export them with kubectl, delete them, and create them again after the change",
		strings.Join(problems, "\n  "))
}

// checkUnrecorded covers overrides of resources no earlier start recorded
// (a database written before routes were recorded): the default datastore
// must hold no objects at the resource's usual key prefix, /registry/RESOURCE/
// for the core group and /registry/GROUP/RESOURCE/ (custom resources) for
// others. A built-in resource of another group is stored at a prefix this
// cannot know and is not checked.
func (d *datastores) checkUnrecorded(ctx context.Context, routes []datastore.Route) ([]string, error) {
	recorded := map[string]bool{}
	for _, r := range routes {
		for _, res := range r.Resources {
			recorded[res] = true
		}
	}
	primary := d.primary()
	var problems []string
	for _, s := range d.all[1:] {
		for _, gr := range s.resources {
			if recorded[gr.String()] {
				continue
			}
			prefix := "/registry/" + gr.Resource + "/"
			if gr.Group != "" {
				prefix = "/registry/" + gr.Group + "/" + gr.Resource + "/"
			}
			n, err := primary.ds.LiveKeys(ctx, prefix)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				problems = append(problems, fmt.Sprintf("datastore %s (%s) holds %d objects of %s (keys %s), which the flags now route to datastore %s (%s)",
					primary.name, primary.describe(), n, gr, prefix, s.name, s.describe()))
			}
		}
	}
	return problems, nil
}

// routeTimeout bounds recording a resource's datastore while its storage
// is built.
const routeTimeout = 30 * time.Second

// route is pushdown's Options.Route: the registry of the datastore where
// the apiserver configured a resource's storage, after recording that the
// datastore holds the resource. A resource named in --datastore-override
// whose storage the apiserver puts elsewhere (it shares the keys of another
// resource, whose override decides) fails instead of being silently kept in
// the default datastore.
func (d *datastores) route(resource schema.GroupResource, servers []string, prefix string) (*index.Registry, error) {
	d.mu.Lock()
	if d.seen == nil {
		d.seen = map[schema.GroupResource]bool{}
	}
	d.seen[resource] = true
	d.mu.Unlock()
	s, ok := d.byServers[strings.Join(servers, ";")]
	if !ok {
		return nil, nil // etcd servers of the user's own: nothing to index
	}
	if want, ok := d.byResource[resource]; ok && want != s {
		return nil, fmt.Errorf("--datastore-override %s/%s: the apiserver stores %s under %s with another resource, in datastore %s; override the resource that owns those keys (e.g. /events for events.k8s.io/events)",
			resource.Group, resource.Resource, resource, prefix, s.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), routeTimeout)
	defer cancel()
	if err := d.primary().ds.RecordRoute(ctx, s.recordedAs(d.primary()), resource.String(), prefix); err != nil {
		return nil, err
	}
	return s.registry, nil
}

// byName finds a datastore by the name the server logs ("" is "default").
func (d *datastores) byName(name string) (*datastore.Datastore, error) {
	if name == "" {
		name = "default"
	}
	var names []string
	for _, s := range d.all {
		if s.name == name {
			return s.ds, nil
		}
		names = append(names, s.name)
	}
	return nil, fmt.Errorf("no datastore %q; this server has %s", name, strings.Join(names, ", "))
}

// checkOverridesApplied fails when the apiserver serves a resource named in
// --datastore-override from storage built for another resource (which the
// override does not reach): events.k8s.io's Events are stored as the core
// group's. A custom resource's storage is built on its first request, so
// each overridden resource served but not seen yet is read once first.
func (d *datastores) checkOverridesApplied(ctx context.Context, kubeconfig string) error {
	if len(d.all) == 1 {
		return nil
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load admin kubeconfig %s: %w", kubeconfig, err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	// Partial discovery failures (an aggregated API down) leave those
	// resources out; they are not harikube's storage anyway.
	lists, _ := disc.ServerPreferredResources()
	var served []schema.GroupVersionResource
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			if _, overridden := d.byResource[gv.WithResource(r.Name).GroupResource()]; overridden {
				served = append(served, gv.WithResource(r.Name))
			}
		}
	}
	var wrong []string
	for _, gvr := range served {
		d.mu.Lock()
		seen := d.seen[gvr.GroupResource()]
		d.mu.Unlock()
		if !seen {
			_, _ = dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
			d.mu.Lock()
			seen = d.seen[gvr.GroupResource()]
			d.mu.Unlock()
		}
		if !seen {
			wrong = append(wrong, gvr.Group+"/"+gvr.Resource)
		}
	}
	for gr := range d.byResource {
		if !slices.ContainsFunc(served, func(gvr schema.GroupVersionResource) bool { return gvr.GroupResource() == gr }) {
			logrus.Warnf("--datastore-override %s/%s: the API serves no such resource yet (a custom resource's definition may come later)", gr.Group, gr.Resource)
		}
	}
	if len(wrong) > 0 {
		return fmt.Errorf("--datastore-override %s: the apiserver stores it with the keys of another resource, which the override does not reach; override that resource instead (e.g. /events, which also holds events.k8s.io/events)", strings.Join(wrong, ", "))
	}
	return nil
}

// describe logs where each datastore is.
func (d *datastores) describe(cfg Config) {
	if len(d.all) == 1 {
		describeDatastore(cfg, d.primary().ds)
		return
	}
	for _, s := range d.all {
		logrus.Infof("Datastore %s: %s (etcd API %s)", s.name, s.describe(), s.ds.Endpoint)
	}
	if cfg.Snapshots.Cron != "" {
		logrus.Warnf("--snapshot-schedule saves the default datastore only; back up the datastores of --datastore-override separately")
	}
}

// kine is the files as Kine's TLS configuration.
func (t DatastoreTLS) kine() tls.Config {
	return tls.Config{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}
}

// NamedDatastore is one datastore of a server's flags: its name (as in the
// metrics' datastore label) and DSN ("" for SQLite in the data directory).
type NamedDatastore struct{ Name, Endpoint string }

// Datastores lists the datastores of a server's flags, the default first,
// checked as `harikube server` checks them.
func Datastores(dataDir, endpoint string, overrides []DatastoreOverride) ([]NamedDatastore, error) {
	d, err := planDatastores(Config{DataDir: dataDir, DatastoreEndpoint: endpoint, DatastoreOverrides: overrides})
	if err != nil {
		return nil, err
	}
	out := make([]NamedDatastore, len(d.all))
	for i, s := range d.all {
		out[i] = NamedDatastore{Name: s.name, Endpoint: s.endpoint}
	}
	return out, nil
}
