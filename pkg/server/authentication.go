package server

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// authenticationArgs lets requests without credentials reach only the health
// checks (/healthz, /livez, /readyz) and /version; anywhere else they get 401
// Unauthorized, where --anonymous-auth=true would authenticate them as
// system:anonymous and answer 403. The paths are set in an authentication
// configuration file, which upstream refuses together with --anonymous-auth,
// --authentication-config or --oidc-* flags: a user setting those configures
// authentication alone, starting from upstream's anonymous default.
func authenticationArgs(dataDir string, user []string) ([]string, error) {
	for _, a := range user {
		if n := flagName(a); n == "anonymous-auth" || n == "authentication-config" || strings.HasPrefix(n, "oidc-") {
			return []string{"--anonymous-auth=true"}, nil
		}
	}
	path := filepath.Join(dataDir, "cred", "authentication-config.yaml")
	const config = `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
  - path: /healthz
  - path: /livez
  - path: /readyz
  - path: /version
`
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("write authentication config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write authentication config: %w", err)
	}
	return []string{"--authentication-config=" + path}, nil
}
