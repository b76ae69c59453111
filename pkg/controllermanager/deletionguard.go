package controllermanager

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// DeletionGuardName names the ValidatingAdmissionPolicy (and its binding)
// that refuses foreground and orphan deletions of opted-out resources: the
// apiserver would add a finalizer only the garbage collector removes, and
// the garbage collector does not see these objects, so they would stay
// terminating forever.
const DeletionGuardName = "harikube-skip-gc-and-quota"

const guardResync = time.Minute

// guardExpression allows background deletions (the default for custom
// resources) and refuses the two policies that leave a finalizer behind.
const guardExpression = `!has(request.options) || request.options == null ||
  ((!has(request.options.propagationPolicy) || !(request.options.propagationPolicy in ['Foreground', 'Orphan'])) &&
   (!has(request.options.orphanDependents) || request.options.orphanDependents != true))`

const guardMessage = `'the garbage collector does not follow ' + request.resource.resource + '.' + request.resource.group +
  ' (its CustomResourceDefinition has the annotation ` + SkipGCAndQuotaAnnotation + `), so a foreground or orphan deletion would never finish;' +
  ' delete with propagationPolicy Background (kubectl delete --cascade=background)'`

// RunDeletionGuard keeps the guard policy's resources equal to the opted-out
// ones (no policy when there are none) until ctx is done. client needs the
// rights to write ValidatingAdmissionPolicies and their bindings.
func (s *SkipGCAndQuota) RunDeletionGuard(ctx context.Context, client kubernetes.Interface) {
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	})
	if err != nil {
		logrus.Errorf("Deletion guard for %s: %v", SkipGCAndQuotaAnnotation, err)
		return
	}
	defer func() { _ = s.informer.RemoveEventHandler(reg) }()
	notify()
	// Also now and then, to put back a policy or binding someone deleted.
	resync := time.NewTicker(guardResync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-resync.C:
		}
		// Retried until it succeeds or the set changes again.
		_ = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
			err := s.reconcileGuard(ctx, client)
			if err != nil {
				logrus.Warnf("Deletion guard for %s: %v (retrying)", SkipGCAndQuotaAnnotation, err)
			}
			return err == nil, nil
		})
	}
}

func (s *SkipGCAndQuota) reconcileGuard(ctx context.Context, client kubernetes.Interface) error {
	skipped, err := s.resources()
	if err != nil {
		return err
	}
	policies := client.AdmissionregistrationV1().ValidatingAdmissionPolicies()
	bindings := client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings()
	if len(skipped) == 0 {
		for _, del := range []func(context.Context, string, metav1.DeleteOptions) error{bindings.Delete, policies.Delete} {
			if err := del(ctx, DeletionGuardName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete %s: %w", DeletionGuardName, err)
			}
		}
		return nil
	}
	want := guardPolicy(skipped)
	have, err := policies.Get(ctx, DeletionGuardName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := policies.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ValidatingAdmissionPolicy %s: %w", DeletionGuardName, err)
		}
	case err != nil:
		return fmt.Errorf("read ValidatingAdmissionPolicy %s: %w", DeletionGuardName, err)
	case !sameGuard(have, want):
		have.Spec = want.Spec
		if _, err := policies.Update(ctx, have, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update ValidatingAdmissionPolicy %s: %w", DeletionGuardName, err)
		}
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: DeletionGuardName},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        DeletionGuardName,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	if _, err := bindings.Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ValidatingAdmissionPolicyBinding %s: %w", DeletionGuardName, err)
	}
	return nil
}

// sameGuard compares what harikube sets, not the fields the apiserver defaults.
func sameGuard(have, want *admissionregistrationv1.ValidatingAdmissionPolicy) bool {
	if have.Spec.MatchConstraints == nil || len(have.Spec.MatchConstraints.ResourceRules) != len(want.Spec.MatchConstraints.ResourceRules) ||
		!reflect.DeepEqual(have.Spec.Validations, want.Spec.Validations) {
		return false
	}
	for i, r := range want.Spec.MatchConstraints.ResourceRules {
		h := have.Spec.MatchConstraints.ResourceRules[i]
		if !slices.Equal(h.APIGroups, r.APIGroups) || !slices.Equal(h.Resources, r.Resources) || !slices.Equal(h.Operations, r.Operations) {
			return false
		}
	}
	return true
}

// guardPolicy matches DELETE (and DELETE collection) of the skipped
// resources, one rule per group, in a stable order.
func guardPolicy(skipped map[schema.GroupResource]bool) *admissionregistrationv1.ValidatingAdmissionPolicy {
	byGroup := map[string][]string{}
	for gr := range skipped {
		byGroup[gr.Group] = append(byGroup[gr.Group], gr.Resource)
	}
	groups := make([]string, 0, len(byGroup))
	for g := range byGroup {
		groups = append(groups, g)
	}
	slices.Sort(groups)
	var rules []admissionregistrationv1.NamedRuleWithOperations
	for _, g := range groups {
		resources := byGroup[g]
		slices.Sort(resources)
		rules = append(rules, admissionregistrationv1.NamedRuleWithOperations{
			RuleWithOperations: admissionregistrationv1.RuleWithOperations{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Delete},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{g}, APIVersions: []string{"*"}, Resources: resources,
				},
			},
		})
	}
	fail := admissionregistrationv1.Fail
	forbidden := metav1.StatusReasonForbidden
	return &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: DeletionGuardName},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy:    &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: rules},
			Validations: []admissionregistrationv1.Validation{{
				Expression: guardExpression, MessageExpression: guardMessage, Reason: &forbidden,
			}},
		},
	}
}
