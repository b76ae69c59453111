package bench

import "github.com/harikube/harikube/pkg/controllermanager"

// OptionalModes can be named in --modes but are not part of "all".
var OptionalModes = []Mode{
	{Name: "harikube-skip-gc", Description: "harikube defaults, the widget CRD annotated " + controllermanager.SkipGCAndQuotaAnnotation +
		`: "true" (no garbage collection or quota for widgets, so no metadata informer of them in the controller manager)`,
		CRDAnnotations: map[string]string{controllermanager.SkipGCAndQuotaAnnotation: "true"}},
}
