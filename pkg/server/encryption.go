package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// encryptionConfig returns the path of the secrets-at-rest encryption
// configuration, creating it with a fresh key on first use. The key is kept
// afterwards: losing it makes every stored Secret unreadable. secretbox
// (XSalsa20-Poly1305) is one of upstream's strong local providers; aescbc is
// discouraged upstream because of padding-oracle attacks.
func encryptionConfig(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "cred", "encryption-config.yaml")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read encryption config %s: %w", path, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("generate encryption key: %w", err)
	}
	config := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - secretbox:
      keys:
      - name: harikube-1
        secret: %s
  - identity: {}
`, base64.StdEncoding.EncodeToString(key))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(config), 0o600); err != nil {
		return "", fmt.Errorf("write encryption config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write encryption config: %w", err)
	}
	return path, nil
}
