package server

import (
	"reflect"
	"testing"
)

func TestWithUserArgsReplacesSameNamedFlags(t *testing.T) {
	own := []string{"--etcd-servers=unix:///tmp/kine.sock", "--secure-port=6443", "--authorization-mode=Node,RBAC"}
	user := []string{"--etcd-servers=http://127.0.0.1:2379", "--authorization-mode=AlwaysAllow", "--v=2"}
	got := withUserArgs(own, user)
	want := []string{"--secure-port=6443", "--etcd-servers=http://127.0.0.1:2379", "--authorization-mode=AlwaysAllow", "--v=2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("withUserArgs = %q, want %q", got, want)
	}
	if got := withUserArgs(own, nil); !reflect.DeepEqual(got, own) {
		t.Fatalf("without user flags = %q, want %q", got, own)
	}
}
