// Package sharedetcd builds the kube-apiserver's etcd3 stores over one etcd
// client per datastore instead of one per store.
//
// Upstream's storage factory (k8s.io/apiserver v0.37.2,
// pkg/storage/storagebackend/factory/etcd3.go, newETCD3Storage) opens a
// client for every store: a gRPC connection with its goroutines and buffers,
// and on an in-process datastore the server's side of it too. That is about
// 70 connections for the built-in resources and one more per custom resource
// version (kubernetes/kubernetes#111622). The factory has no way to pass a
// client in, so NewStorage repeats its assembly around the exported
// etcd3.New. TestUpstreamFactoryUnchanged fails when upstream changes that
// assembly, so that this package is reviewed against the new version.
package sharedetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/pkg/v3/logutil"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	genericfeatures "k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/egressselector"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/storage/storagebackend/factory"
	"k8s.io/apiserver/pkg/storage/value/encrypt/identity"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/tracing"
)

// The factory's connection settings (unexported there).
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	dialTimeout      = 20 * time.Second
)

// Clients hands out stores that share a client per transport and compaction
// interval. A client is closed when the last store using it is destroyed.
type Clients struct {
	mu      sync.Mutex
	clients map[string]*sharedClient
	stores  int // numbers each store's watch stream
	logger  *zap.Logger
	metrics *grpcprom.ClientMetrics
}

type sharedClient struct {
	client    *kubernetes.Client
	compactor stoppableCompactor // nil without compaction
	refs      int
}

// stoppableCompactor is upstream's per-endpoint compactor, stopped with the
// client.
type stoppableCompactor interface {
	etcd3.Compactor
	Stop()
}

// New returns an empty set of clients.
func New() *Clients {
	logger, err := logutil.CreateDefaultZapLogger(zapcore.InfoLevel)
	if err != nil {
		logger = zap.NewNop()
	}
	return &Clients{clients: map[string]*sharedClient{}, logger: logger.Named("etcd-client"), metrics: clientMetrics()}
}

// clientMetrics returns the gRPC client metrics the storage factory registered
// (grpc_client_*), so requests of shared clients are counted with the rest.
func clientMetrics() *grpcprom.ClientMetrics {
	m := grpcprom.NewClientMetrics()
	var registered prometheus.AlreadyRegisteredError
	if err := legacyregistry.Registerer().Register(m); errors.As(err, &registered) {
		if existing, ok := registered.ExistingCollector.(*grpcprom.ClientMetrics); ok {
			return existing
		}
	}
	return m
}

// NewStorage has the signature of generic.NewRawStorage and builds the same
// store as upstream's factory, over a shared client.
func (c *Clients) NewStorage(config *storagebackend.ConfigForResource, newFunc, newListFunc func() runtime.Object, resourcePrefix string) (storage.Interface, factory.DestroyFunc, error) {
	if config.Type != storagebackend.StorageTypeUnset && config.Type != storagebackend.StorageTypeETCD3 {
		return factory.Create(*config, newFunc, newListFunc, resourcePrefix)
	}
	key, shared, err := c.acquire(config)
	if err != nil {
		return nil, nil, err
	}
	transformer := config.Transformer
	if transformer == nil {
		transformer = identity.NewEncryptCheckTransformer()
	}
	versioner := storage.APIObjectVersioner{}
	decoder := etcd3.NewDefaultDecoder(config.Codec, versioner)
	unsafeDeletion := utilfeature.DefaultFeatureGate.Enabled(genericfeatures.AllowUnsafeMalformedObjectDeletion)
	if unsafeDeletion {
		transformer = etcd3.WithCorruptObjErrorHandlingTransformer(transformer)
		decoder = etcd3.WithCorruptObjErrorHandlingDecoder(decoder)
	}
	var compactor etcd3.Compactor // a nil interface, not a nil pointer, without compaction
	if shared.compactor != nil {
		compactor = shared.compactor
	}
	store, err := etcd3.New(shared.client, compactor, config.Codec, newFunc, newListFunc, config.Prefix, resourcePrefix,
		config.GroupResource, transformer, config.LeaseManagerConfig, decoder, versioner)
	if err != nil {
		c.release(key)
		return nil, nil, err
	}
	var once sync.Once
	destroy := func() {
		// Upstream calls a store's destroy func more than once (subresources).
		once.Do(func() {
			store.Close()
			c.release(key)
		})
	}
	var s storage.Interface = store
	if unsafeDeletion {
		s = etcd3.NewStoreWithUnsafeCorruptObjectDeletion(s, config.GroupResource)
	}
	return &ownStream{Interface: s, id: c.nextStreamID()}, destroy, nil
}

// streamMetadataKey names a store in the gRPC metadata of its watches.
const streamMetadataKey = "harikube-store"

// ownStream keeps a store's watches and progress requests on gRPC streams of
// their own, as with a client per store. The etcd client opens one watch
// stream per set of metadata, and the datastore (like etcd) answers a
// progress request only once every watch on the stream has caught up: on a
// shared stream one store's busy watch would hold back the progress, and
// with it the consistent reads from the watch cache, of every other store.
type ownStream struct {
	storage.Interface
	id string
}

func (s *ownStream) Watch(ctx context.Context, key string, opts storage.ListOptions) (watch.Interface, error) {
	return s.Interface.Watch(metadata.AppendToOutgoingContext(ctx, streamMetadataKey, s.id), key, opts)
}

func (s *ownStream) RequestWatchProgress(ctx context.Context) error {
	return s.Interface.RequestWatchProgress(metadata.AppendToOutgoingContext(ctx, streamMetadataKey, s.id))
}

func (c *Clients) nextStreamID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stores++
	return strconv.Itoa(c.stores)
}

// acquire returns the client for config's transport, opening it first.
func (c *Clients) acquire(config *storagebackend.ConfigForResource) (string, *sharedClient, error) {
	key := fmt.Sprintf("%v %v", config.Transport, config.CompactionInterval)
	c.mu.Lock()
	defer c.mu.Unlock()
	if shared, ok := c.clients[key]; ok {
		shared.refs++
		return key, shared, nil
	}
	client, err := c.open(config.Transport)
	if err != nil {
		return "", nil, err
	}
	// The latency of every request, as upstream's stores record it.
	client.KV = etcd3.NewETCDLatencyTracker(client.KV)
	shared := &sharedClient{client: client, refs: 1}
	if config.CompactionInterval > 0 {
		shared.compactor = etcd3.StartCompactorPerEndpoint(client.Client, config.CompactionInterval)
	}
	c.clients[key] = shared
	return key, shared, nil
}

func (c *Clients) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	shared := c.clients[key]
	if shared.refs--; shared.refs > 0 {
		return
	}
	delete(c.clients, key)
	if shared.compactor != nil {
		shared.compactor.Stop()
	}
	_ = shared.client.Close()
}

// open connects as the factory's newETCD3Client does: the same TLS, egress
// dialer, keepalive, interceptors and tracing, and it waits for the
// connection to be ready.
func (c *Clients) open(t storagebackend.TransportConfig) (*kubernetes.Client, error) {
	tlsInfo := transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.TrustedCAFile}
	tlsConfig, err := tlsInfo.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd client TLS: %w", err)
	}
	if t.CertFile == "" && t.KeyFile == "" && t.TrustedCAFile == "" {
		tlsConfig = nil // the client tells plain connections by a nil config
	}
	dialOptions := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(c.metrics.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(c.metrics.StreamClientInterceptor()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithMessageEvents(otelgrpc.ReceivedEvents, otelgrpc.SentEvents),
			otelgrpc.WithPropagators(tracing.Propagators()),
			otelgrpc.WithTracerProvider(t.TracerProvider))),
	}
	if t.EgressLookup != nil {
		dial, err := t.EgressLookup(egressselector.Etcd.AsNetworkContext())
		if err != nil {
			return nil, fmt.Errorf("etcd egress dialer: %w", err)
		}
		if dial != nil {
			dialOptions = append(dialOptions, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return dial(ctx, "tcp", addr)
			}))
		}
	}
	client, err := kubernetes.New(clientv3.Config{
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    keepaliveTime,
		DialKeepAliveTimeout: keepaliveTimeout,
		DialOptions:          dialOptions,
		Endpoints:            t.ServerList,
		TLS:                  tlsConfig,
		Logger:               c.logger,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", t.ServerList, err)
	}
	if err := waitReady(client.ActiveConnection()); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("etcd client for %v: %w", t.ServerList, err)
	}
	return client, nil
}

// waitReady fails a store early, as upstream does, when the datastore cannot
// be reached within the dial timeout.
func waitReady(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("connection not ready: %w", ctx.Err())
		}
	}
}
