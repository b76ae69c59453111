package bench

import (
	"slices"
	"testing"

	"github.com/harikube/harikube/pkg/controllermanager"
)

func TestOptionalModeByNameOnly(t *testing.T) {
	modes, _, err := ParseModes("harikube,harikube-skip-gc")
	if err != nil {
		t.Fatal(err)
	}
	if len(modes) != 2 || modes[1].CRDAnnotations[controllermanager.SkipGCAndQuotaAnnotation] != "true" || modes[0].CRDAnnotations != nil {
		t.Fatalf("modes %v: want harikube, then harikube-skip-gc with the annotation", modes)
	}
	all, _, err := ParseModes("all")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ModeNames(all), "harikube-skip-gc") {
		t.Fatalf("--modes all includes the optional mode: %v", ModeNames(all))
	}
}
