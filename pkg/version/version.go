// Package version reports the versions harikube is built from.
package version

import (
	"runtime"
	"runtime/debug"

	k8sversion "k8s.io/component-base/version"
	sqlitelib "modernc.org/sqlite/lib"
)

// Version is harikube's own version, set at build time with
// -ldflags "-X github.com/harikube/harikube/pkg/version.Version=...".
var Version = "dev"

// Info lists the component versions in display order.
type Info struct {
	Harikube   string
	Kubernetes string
	Kine       string
	SQLite     string
	Go         string
}

// Get returns the versions of this binary.
func Get() Info {
	return Info{
		Harikube:   Version,
		Kubernetes: k8sversion.Get().GitVersion,
		Kine:       moduleVersion("github.com/k3s-io/kine"),
		SQLite:     sqlitelib.SQLITE_VERSION + " (modernc.org/sqlite " + moduleVersion("modernc.org/sqlite") + ")",
		Go:         runtime.Version(),
	}
}

func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range bi.Deps {
		if dep.Path == path {
			if dep.Replace != nil {
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "unknown"
}
