package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/harikube/harikube/pkg/controllermanager"
	"github.com/harikube/harikube/tests/testserver"
)

var (
	followedThings = schema.GroupVersionResource{Group: "cache.harikube.io", Version: "v1", Resource: "things"}
	skippedThings  = schema.GroupVersionResource{Group: "cache.harikube.io", Version: "v1", Resource: "skippedthings"}
)

// gcWait covers the controllers' discovery period (30 s) twice, on a busy machine.
const gcWait = 150 * time.Second

// TestSkipGCAndQuota shows what the CRD annotation harikube.io/skip-gc-and-quota
// changes, with a followed and an opted-out custom resource side by side:
// the controller manager watches only the followed one; cascading deletion
// works as upstream for everything that does not opt out; the opted-out
// resource is neither collected nor counted by quota, and foreground or
// orphan deletions of it are refused instead of hanging; removing the
// annotation brings it back without a restart.
func TestSkipGCAndQuota(t *testing.T) {
	s := testserver.Start(t)
	ctx := context.Background()
	ext := apiextensionsclient.NewForConfigOrDie(s.Config)
	dyn := dynamic.NewForConfigOrDie(s.Config)
	ns := "default"

	// The opted-out CRD first: any discovery that shows things also shows it.
	createCacheCRD(t, ext, dyn, skippedThings, "SkippedThing", map[string]string{controllermanager.SkipGCAndQuotaAnnotation: "true"})
	createCacheCRD(t, ext, dyn, followedThings, "Thing", nil)

	watches := func(resource string) float64 {
		return s.Metric(t, "apiserver_longrunning_requests", `resource="`+resource+`"`, `verb="WATCH"`)
	}
	waitFor(t, "the controller manager to watch things", func(ctx context.Context) bool { return watches("things") >= 1 })
	if n := watches("skippedthings"); n != 0 {
		t.Fatalf("%v watches of skippedthings, want none: the controller manager follows an opted-out resource", n)
	}

	t.Run("cascading deletion of resources that do not opt out", func(t *testing.T) {
		// A custom resource owning a ConfigMap, background and foreground.
		for _, policy := range []metav1.DeletionPropagation{metav1.DeletePropagationBackground, metav1.DeletePropagationForeground} {
			name := "cr-owner-" + strings.ToLower(string(policy))
			owner := createThing(t, dyn, followedThings, ns, name, nil)
			dep := createConfigMap(t, s.Client, ns, name+"-dep", ownerRef(owner, true))
			deleteWith(t, dyn, followedThings, ns, name, policy)
			waitGone(t, "ConfigMap "+dep.Name+" ("+string(policy)+" deletion of its Thing owner)", func(ctx context.Context) error {
				_, err := s.Client.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
				return err
			})
			waitGone(t, "Thing "+name, func(ctx context.Context) error {
				_, err := dyn.Resource(followedThings).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
				return err
			})
		}
		// A ConfigMap owning custom resources; the opted-out dependent stays.
		for _, policy := range []metav1.DeletionPropagation{metav1.DeletePropagationBackground, metav1.DeletePropagationForeground} {
			name := "cm-owner-" + strings.ToLower(string(policy))
			owner := createConfigMap(t, s.Client, ns, name, nil)
			ref := metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, BlockOwnerDeletion: ptrTo(true)}
			createThing(t, dyn, followedThings, ns, name+"-dep", &ref)
			skippedRef := ref
			skippedRef.BlockOwnerDeletion = nil
			createThing(t, dyn, skippedThings, ns, name+"-skipped-dep", &skippedRef)
			if err := s.Client.CoreV1().ConfigMaps(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
				t.Fatal(err)
			}
			waitGone(t, "Thing "+name+"-dep ("+string(policy)+" deletion of its ConfigMap owner)", func(ctx context.Context) error {
				_, err := dyn.Resource(followedThings).Namespace(ns).Get(ctx, name+"-dep", metav1.GetOptions{})
				return err
			})
			waitGone(t, "ConfigMap "+name, func(ctx context.Context) error {
				_, err := s.Client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
				return err
			})
			time.Sleep(5 * time.Second)
			if _, err := dyn.Resource(skippedThings).Namespace(ns).Get(ctx, name+"-skipped-dep", metav1.GetOptions{}); err != nil {
				t.Fatalf("the opted-out dependent of %s: %v; want it kept (the garbage collector does not see it)", name, err)
			}
		}
	})

	t.Run("an opted-out owner", func(t *testing.T) {
		// Its deletion is not seen; the garbage collector, which cannot watch
		// the owner, reads it again with a growing interval (upstream's
		// work-queue back-off, up to 1000 s) and collects the dependent when
		// it finds the owner gone.
		owner := createThing(t, dyn, skippedThings, ns, "skipped-owner", nil)
		dep := createConfigMap(t, s.Client, ns, "dep-of-skipped", ownerRef(owner, false))
		time.Sleep(20 * time.Second) // the owner has been found to exist, more than once
		deleteWith(t, dyn, skippedThings, ns, owner.GetName(), metav1.DeletePropagationBackground)
		deleted := time.Now()
		waitGone(t, "ConfigMap "+dep.Name+" (its opted-out owner deleted)", func(ctx context.Context) error {
			_, err := s.Client.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
			return err
		})
		t.Logf("the dependent of a deleted opted-out owner was collected %.1f s after the owner's deletion", time.Since(deleted).Seconds())
		// A dependent whose opted-out owner never existed is collected: the
		// owner is looked up through the RESTMapper, which knows every resource.
		absent := unstructured.Unstructured{}
		absent.SetAPIVersion(skippedThings.GroupVersion().String())
		absent.SetKind("SkippedThing")
		absent.SetName("never-existed")
		absent.SetUID(types.UID("6f1e7a4e-0000-4000-8000-000000000001"))
		orphan := createConfigMap(t, s.Client, ns, "dep-of-absent-skipped", ownerRef(&absent, false))
		waitGone(t, "ConfigMap "+orphan.Name+" (its opted-out owner does not exist)", func(ctx context.Context) error {
			_, err := s.Client.CoreV1().ConfigMaps(ns).Get(ctx, orphan.Name, metav1.GetOptions{})
			return err
		})
	})

	t.Run("foreground and orphan deletion of an opted-out object are refused", func(t *testing.T) {
		createThing(t, dyn, skippedThings, ns, "refused", nil)
		for _, policy := range []metav1.DeletionPropagation{metav1.DeletePropagationForeground, metav1.DeletePropagationOrphan} {
			err := dyn.Resource(skippedThings).Namespace(ns).Delete(ctx, "refused", metav1.DeleteOptions{PropagationPolicy: &policy})
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), controllermanager.SkipGCAndQuotaAnnotation) || !strings.Contains(err.Error(), "--cascade=background") {
				t.Fatalf("%s deletion of an opted-out object: %v; want Forbidden naming the annotation and what to do", policy, err)
			}
		}
		if _, code := s.Run(t, "kubectl", "delete", "-n", ns, skippedThings.Resource+"."+skippedThings.Group, "refused", "--cascade=foreground"); code == 0 {
			t.Fatal("kubectl delete --cascade=foreground of an opted-out object succeeded")
		}
		if out, code := s.Run(t, "kubectl", "delete", "-n", ns, skippedThings.Resource+"."+skippedThings.Group, "refused"); code != 0 {
			t.Fatalf("kubectl delete (background) of an opted-out object: exit %d, %s", code, out)
		}
		// The followed resource is not refused.
		createThing(t, dyn, followedThings, ns, "foreground-ok", nil)
		deleteWith(t, dyn, followedThings, ns, "foreground-ok", metav1.DeletePropagationForeground)
		waitGone(t, "Thing foreground-ok (foreground)", func(ctx context.Context) error {
			_, err := dyn.Resource(followedThings).Namespace(ns).Get(ctx, "foreground-ok", metav1.GetOptions{})
			return err
		})
	})

	t.Run("count quota", func(t *testing.T) {
		quotaNS := "quota"
		if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: quotaNS}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		counted := corev1.ResourceName("count/" + followedThings.Resource + "." + followedThings.Group)
		uncounted := corev1.ResourceName("count/" + skippedThings.Resource + "." + skippedThings.Group)
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "q"}, Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{
			counted: resource.MustParse("5"), uncounted: resource.MustParse("5"),
		}}}
		if _, err := s.Client.CoreV1().ResourceQuotas(quotaNS).Create(ctx, quota, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Quota admission charges a create only once the controller has
		// filled in the quota's status (and refuses it before that).
		waitFor(t, "the quota controller to count things", func(ctx context.Context) bool {
			q, err := s.Client.CoreV1().ResourceQuotas(quotaNS).Get(ctx, "q", metav1.GetOptions{})
			_, ok := q.Status.Used[counted]
			return err == nil && ok
		})
		waitFor(t, "a thing created under the quota", func(ctx context.Context) bool {
			err := createThingErr(ctx, dyn, followedThings, quotaNS, "counted", nil)
			return err == nil || apierrors.IsAlreadyExists(err)
		})
		// (Not waited for: used reaching 1. Upstream's controller may recount
		// from its informer before it has the new object, and then corrects
		// the figure only at its next full resync, 5 minutes later.)
		q, err := s.Client.CoreV1().ResourceQuotas(quotaNS).Get(ctx, "q", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.Status.Used[uncounted]; ok {
			t.Fatalf("quota status counts the opted-out resource: %v", q.Status.Used)
		}
		// Upstream's quota admission refuses what it cannot count.
		err = createThingErr(ctx, dyn, skippedThings, quotaNS, "uncounted", nil)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "status unknown for quota") {
			t.Fatalf("create of an opted-out resource under a count quota: %v; want Forbidden, status unknown for quota", err)
		}
	})

	t.Run("removing the annotation at run time", func(t *testing.T) {
		crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, skippedThings.Resource+"."+skippedThings.Group, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delete(crd.Annotations, controllermanager.SkipGCAndQuotaAnnotation)
		if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the controller manager to watch skippedthings", func(ctx context.Context) bool { return watches("skippedthings") >= 1 })
		waitFor(t, "the deletion guard to go", func(ctx context.Context) bool {
			_, err := s.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, controllermanager.DeletionGuardName, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
		// Its dependent kept while it was opted out is collected now.
		waitGone(t, "SkippedThing cm-owner-background-skipped-dep (its owner is gone)", func(ctx context.Context) error {
			_, err := dyn.Resource(skippedThings).Namespace(ns).Get(ctx, "cm-owner-background-skipped-dep", metav1.GetOptions{})
			return err
		})
		owner := createConfigMap(t, s.Client, ns, "owner-after", nil)
		createThing(t, dyn, skippedThings, ns, "dep-after", &metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID})
		if err := s.Client.CoreV1().ConfigMaps(ns).Delete(ctx, owner.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "SkippedThing dep-after (followed again)", func(ctx context.Context) error {
			_, err := dyn.Resource(skippedThings).Namespace(ns).Get(ctx, "dep-after", metav1.GetOptions{})
			return err
		})
	})

	t.Run("adding the annotation to a followed resource", func(t *testing.T) {
		crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, followedThings.Resource+"."+followedThings.Group, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		crd.Annotations = map[string]string{controllermanager.SkipGCAndQuotaAnnotation: "true"}
		if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The guard applies at once; the informer already started stays
		// (upstream cannot stop one shared informer) until a restart.
		waitFor(t, "the deletion guard for things", func(ctx context.Context) bool {
			p, err := s.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, controllermanager.DeletionGuardName, metav1.GetOptions{})
			return err == nil && len(p.Spec.MatchConstraints.ResourceRules) == 1 && slices.Equal(p.Spec.MatchConstraints.ResourceRules[0].Resources, []string{followedThings.Resource})
		})
		if n := watches("things"); n < 1 {
			t.Fatalf("%v watches of things before the restart, want the informer still running", n)
		}
		if code := s.Stop(t); code != 0 {
			t.Fatalf("harikube server exited %d on SIGTERM", code)
		}
		s.Restart(t)
		waitFor(t, "the controller manager to watch skippedthings after the restart", func(ctx context.Context) bool { return watches("skippedthings") >= 1 })
		if n := watches("things"); n != 0 {
			t.Fatalf("%v watches of things after the restart, want none", n)
		}
	})
}

func createCacheCRD(t *testing.T, ext apiextensionsclient.Interface, dyn dynamic.Interface, gvr schema.GroupVersionResource, kind string, annotations map[string]string) {
	t.Helper()
	preserve := true
	crd := testserver.NamespacedCRD(gvr, kind, &apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &preserve})
	crd.Annotations = annotations
	_, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(context.Background(), crd, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, gvr.Resource+" to be served", func(ctx context.Context) bool {
		_, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
}

func createThingErr(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string, owner *metav1.OwnerReference) error {
	_, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, thing(gvr, ns, name, owner), metav1.CreateOptions{})
	return err
}

func createThing(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string, owner *metav1.OwnerReference) *unstructured.Unstructured {
	t.Helper()
	obj, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), thing(gvr, ns, name, owner), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create %s %s: %v", gvr.Resource, name, err)
	}
	return obj
}

func thing(gvr schema.GroupVersionResource, ns, name string, owner *metav1.OwnerReference) *unstructured.Unstructured {
	kind := "Thing"
	if gvr == skippedThings {
		kind = "SkippedThing"
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"n": "1"}}}
	obj.SetAPIVersion(gvr.GroupVersion().String())
	obj.SetKind(kind)
	obj.SetNamespace(ns)
	obj.SetName(name)
	if owner != nil {
		obj.SetOwnerReferences([]metav1.OwnerReference{*owner})
	}
	return obj
}

func createConfigMap(t *testing.T, c kubernetes.Interface, ns, name string, owner *metav1.OwnerReference) *corev1.ConfigMap {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if owner != nil {
		cm.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	cm, err := c.CoreV1().ConfigMaps(ns).Create(context.Background(), cm, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ConfigMap %s: %v", name, err)
	}
	return cm
}

func ownerRef(owner *unstructured.Unstructured, block bool) *metav1.OwnerReference {
	ref := &metav1.OwnerReference{APIVersion: owner.GetAPIVersion(), Kind: owner.GetKind(), Name: owner.GetName(), UID: owner.GetUID()}
	if block {
		ref.BlockOwnerDeletion = ptrTo(true)
	}
	return ref
}

func deleteWith(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string, policy metav1.DeletionPropagation) {
	t.Helper()
	if err := dyn.Resource(gvr).Namespace(ns).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
		t.Fatalf("delete %s %s (%s): %v", gvr.Resource, name, policy, err)
	}
}

// waitGone waits until get answers NotFound.
func waitGone(t *testing.T, what string, get func(ctx context.Context) error) {
	t.Helper()
	waitFor(t, what+" to be deleted", func(ctx context.Context) bool { return apierrors.IsNotFound(get(ctx)) })
}

func waitFor(t *testing.T, what string, cond func(ctx context.Context) bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, gcWait, true,
		func(ctx context.Context) (bool, error) { return cond(ctx), nil })
	if err != nil {
		t.Fatalf("timed out after %s waiting for %s", gcWait, what)
	}
}

func ptrTo[T any](v T) *T { return &v }
