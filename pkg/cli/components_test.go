package cli

import (
	"reflect"
	"testing"
)

func TestDropRemovedControllers(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{
			in:   []string{"--kubeconfig=x", "--controllers=*,-nodeipam,-cloud-node-lifecycle,-ttl"},
			want: []string{"--kubeconfig=x", "--controllers=*,-nodeipam,-ttl"},
		},
		{
			in:   []string{"--controllers", "*,-cloud-node-lifecycle,-route,-service", "--leader-elect=true"},
			want: []string{"--controllers", "*", "--leader-elect=true"},
		},
		// Unknown names other than removed controllers, and enabling a
		// removed one, are left for upstream validation to refuse.
		{
			in:   []string{"--controllers=*,-no-such-controller,cloud-node-lifecycle"},
			want: []string{"--controllers=*,-no-such-controller,cloud-node-lifecycle"},
		},
		{in: []string{"--leader-elect=false"}, want: []string{"--leader-elect=false"}},
	} {
		if got := dropRemovedControllers(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("dropRemovedControllers(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEnvBool(t *testing.T) {
	t.Setenv("HARIKUBE_TEST_BOOL", "")
	if v, err := envBool("HARIKUBE_TEST_BOOL", true); err != nil || !v {
		t.Errorf("empty: %v %v", v, err)
	}
	t.Setenv("HARIKUBE_TEST_BOOL", "false")
	if v, err := envBool("HARIKUBE_TEST_BOOL", true); err != nil || v {
		t.Errorf("false: %v %v", v, err)
	}
	t.Setenv("HARIKUBE_TEST_BOOL", "maybe")
	if _, err := envBool("HARIKUBE_TEST_BOOL", true); err == nil {
		t.Error("maybe: want an error")
	}
}
