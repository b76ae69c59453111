package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"
)

// keyFingerprints lists the keys of an encryption configuration as
// "name:first 12 hex digits of sha256(secret)": enough to tell keys apart,
// useless to recover one. A missing file has no keys.
func keyFingerprints(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read encryption configuration: %w", err)
	}
	var cfg apiserverv1.EncryptionConfiguration
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("parse encryption configuration %s: %w", path, err)
	}
	var out []string
	for _, r := range cfg.Resources {
		for _, p := range r.Providers {
			var keys []apiserverv1.Key
			for _, k := range []*apiserverv1.AESConfiguration{p.AESGCM, p.AESCBC} {
				if k != nil {
					keys = append(keys, k.Keys...)
				}
			}
			if p.Secretbox != nil {
				keys = append(keys, p.Secretbox.Keys...)
			}
			for _, k := range keys {
				sum := sha256.Sum256([]byte(k.Secret))
				fp := k.Name + ":" + hex.EncodeToString(sum[:])[:12]
				if !slices.Contains(out, fp) {
					out = append(out, fp)
				}
			}
		}
	}
	return out, nil
}
