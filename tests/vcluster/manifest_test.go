package vcluster

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestManifest: each packaged manifest is the chart rendered with its values
// file: its config secret decodes to a vCluster config naming the harikube
// image, with the same distro settings as the values file, and the init
// container copies /kubernetes/. from that image. It holds no Namespace
// (removing the manifest must not delete the PVC) and the StatefulSet keeps
// its PVC when deleted. The all-in-one manifest runs `harikube server`.
func TestManifest(t *testing.T) {
	for _, tc := range []struct {
		manifest, values string
		allInOne         bool
	}{
		{"vcluster-kine-sqlite.yaml", "vcluster-values.yaml", true},
		{"vcluster-0.36-per-component.yaml", "vcluster-0.36-per-component-values.yaml", false},
	} {
		t.Run(tc.manifest, func(t *testing.T) { checkManifest(t, tc.manifest, tc.values, tc.allInOne) })
	}
}

func checkManifest(t *testing.T, manifestFile, valuesFile string, allInOne bool) {
	root := repoRoot(t)
	manifest, err := os.ReadFile(filepath.Join(root, "package", manifestFile))
	if err != nil {
		t.Fatal(err)
	}
	valuesData, err := os.ReadFile(filepath.Join(root, "package", valuesFile))
	if err != nil {
		t.Fatal(err)
	}
	want := readValues(t, valuesData)

	kinds := map[string]bool{}
	var config []byte
	var initImage, retention string
	var initCommand []string
	for _, doc := range bytes.Split(manifest, []byte("\n---")) {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Data map[string]string `json:"data"`
			Spec struct {
				PersistentVolumeClaimRetentionPolicy struct {
					WhenDeleted string `json:"whenDeleted"`
				} `json:"persistentVolumeClaimRetentionPolicy"`
				Template struct {
					Spec struct {
						InitContainers []struct {
							Name    string   `json:"name"`
							Image   string   `json:"image"`
							Command []string `json:"command"`
							Args    []string `json:"args"`
						} `json:"initContainers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("manifest document: %v", err)
		}
		if obj.Kind == "" {
			continue
		}
		kinds[obj.Kind+"/"+obj.Metadata.Name] = true
		if obj.Kind == "Namespace" {
			t.Errorf("manifest holds Namespace/%s: `kubectl delete -f` would delete it and the database's PVC in it", obj.Metadata.Name)
		}
		if obj.Kind != "Namespace" && !strings.HasPrefix(obj.Kind, "Cluster") && obj.Metadata.Namespace != "kine" {
			t.Errorf("%s/%s is in namespace %q, want kine", obj.Kind, obj.Metadata.Name, obj.Metadata.Namespace)
		}
		if obj.Kind == "Secret" && obj.Metadata.Name == "vc-config-kine" {
			if config, err = base64.StdEncoding.DecodeString(obj.Data["config.yaml"]); err != nil {
				t.Fatalf("vc-config-kine config.yaml: %v", err)
			}
		}
		if obj.Kind == "StatefulSet" {
			retention = obj.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted
			for _, c := range obj.Spec.Template.Spec.InitContainers {
				if c.Name == "kubernetes" {
					initImage = c.Image
					initCommand = append(c.Command, c.Args...)
				}
			}
		}
	}
	if retention != "Retain" {
		t.Errorf("StatefulSet persistentVolumeClaimRetentionPolicy.whenDeleted = %q, want Retain (the PVC with the database outlives the StatefulSet)", retention)
	}
	for _, k := range []string{"ServiceAccount/vc-kine", "Secret/vc-config-kine", "Role/vc-kine", "RoleBinding/vc-kine",
		"Service/kine", "Service/kine-headless", "StatefulSet/kine"} {
		if !kinds[k] {
			t.Errorf("manifest has no %s (has %v)", k, kinds)
		}
	}
	if config == nil {
		t.Fatal("no config secret vc-config-kine")
	}
	got := readValues(t, config)
	k8s := got.ControlPlane.Distro.K8S
	image := k8s.Image.Registry + "/" + k8s.Image.Repository + ":" + k8s.Image.Tag
	wantImage := want.ControlPlane.Distro.K8S.Image
	if k8s.Image.Repository != "harikube/harikube" || !strings.HasPrefix(k8s.Image.Tag, "v") {
		t.Errorf("config names distro image %s, want harikube/harikube", image)
	}
	if !allInOne {
		// 0.33 and later write every value into the secret, defaults too:
		// only the image is ours, and both upstream components run.
		if k8s.Image != wantImage || !k8s.APIServer.Enabled || len(k8s.APIServer.Command) > 0 || !k8s.ControllerManager.Enabled {
			t.Errorf("config secret's distro %+v, want the image of package/%s (%+v) and vCluster's own apiserver and controller manager", k8s, valuesFile, wantImage)
		}
	} else if !k8s.Enabled || !reflect.DeepEqual(got.ControlPlane.Distro.K8S, want.ControlPlane.Distro.K8S) {
		t.Errorf("config secret differs from package/%s (re-render the manifest):\nsecret: %+v\nvalues: %+v", valuesFile, k8s, want.ControlPlane.Distro.K8S)
	}
	if initImage != wantImage.Registry+"/"+wantImage.Repository+":"+wantImage.Tag {
		t.Errorf("init container image %q, want the harikube image %s", initImage, image)
	}
	if strings.Join(initCommand, " ") != "cp -r /kubernetes/. /binaries/" {
		t.Errorf("init container runs %q", initCommand)
	}
	if allInOne && (len(k8s.APIServer.Command) < 2 || k8s.APIServer.Command[0] != "/binaries/harikube" || k8s.APIServer.Command[1] != "server") {
		t.Errorf("apiServer.command = %q, want /binaries/harikube server ...", k8s.APIServer.Command)
	}
}
