package apiserver

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/registry/generic"
	genericoptions "k8s.io/apiserver/pkg/server/options"
)

// customResourceServers applies --etcd-servers-overrides to custom
// resources. Upstream builds their storage from a SimpleStorageFactory,
// which ignores the flag: a custom resource named there would silently stay
// in the default etcd.
func customResourceServers(inner generic.RESTOptionsGetter, overrides []string) (generic.RESTOptionsGetter, error) {
	parsed, err := genericoptions.ParseEtcdServersOverrides(overrides)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	if len(parsed) == 0 {
		return inner, nil
	}
	servers := map[schema.GroupResource][]string{}
	for _, o := range parsed {
		servers[o.GroupResource] = o.Servers
	}
	return &overridingGetter{inner: inner, servers: servers}, nil
}

type overridingGetter struct {
	inner   generic.RESTOptionsGetter
	servers map[schema.GroupResource][]string
}

func (g *overridingGetter) GetRESTOptions(resource schema.GroupResource, example runtime.Object) (generic.RESTOptions, error) {
	ro, err := g.inner.GetRESTOptions(resource, example)
	if servers, ok := g.servers[resource]; ok && err == nil && ro.StorageConfig != nil {
		// StorageConfig is this resource's own copy (ConfigForResource).
		ro.StorageConfig.Transport.ServerList = servers
	}
	return ro, err
}
