package selection

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/metadata"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
)

func roundTrip(t *testing.T, s Selection) Selection {
	t.Helper()
	ctx, err := NewOutgoingContext(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	got, ok, err := FromIncomingContext(metadata.NewIncomingContext(context.Background(), md))
	if err != nil {
		t.Fatal(err)
	}
	if ok != !s.Empty() {
		t.Fatalf("ok=%v for %+v", ok, s)
	}
	return got
}

// same compares selections, an empty list equal to none.
func same(a, b Selection) bool { return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b) }

func TestRoundTripKeepsEveryValue(t *testing.T) {
	ls, err := labels.Parse("app in (web,db),tier!=1,!legacy,version>3,zone")
	if err != nil {
		t.Fatal(err)
	}
	// Field values may be any string, including ones that are not valid
	// in a plain gRPC header.
	fs := fields.AndSelectors(fields.OneTermEqualSelector("spec.name", "ünïcode\x00\n\"quoted\",comma=eq"), fields.OneTermNotEqualSelector("status.phase", ""))
	s := FromSelectors(ls, fs)
	if got := roundTrip(t, s); !same(got, s) {
		t.Fatalf("got %+v, want %+v", got, s)
	}
	if len(s.Labels) != 5 || len(s.Fields) != 2 {
		t.Fatalf("requirements lost: %+v", s)
	}
}

func TestEmptyAndNothingAttachNothing(t *testing.T) {
	for _, s := range []Selection{
		FromSelectors(labels.Everything(), fields.Everything()),
		FromSelectors(labels.Nothing(), fields.Nothing()),
		FromSelectors(nil, nil),
	} {
		ctx, err := NewOutgoingContext(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := metadata.FromOutgoingContext(ctx); ok {
			t.Fatalf("metadata attached for %+v", s)
		}
	}
}

func TestUndecodableMetadataIsAnError(t *testing.T) {
	for _, v := range []string{"{", "[]", `{"l":[{"k":1}]}`, string(make([]byte, MaxEncodedSize+1))} {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, v))
		if _, ok, err := FromIncomingContext(ctx); err == nil || ok {
			t.Errorf("%.20q: ok=%v err=%v, want an error", v, ok, err)
		}
	}
}

// Below WithDecoded the selection comes from the context value, not from
// decoding the metadata again: replacing the metadata underneath shows it.
func TestWithDecodedDecodesOnce(t *testing.T) {
	ls, err := labels.Parse("app=web")
	if err != nil {
		t.Fatal(err)
	}
	want := FromSelectors(ls, nil)
	v, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ctx, got, ok, err := WithDecoded(metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, v)))
	if err != nil || !ok || !same(got, want) {
		t.Fatalf("WithDecoded = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	below := metadata.NewIncomingContext(ctx, metadata.Pairs(MetadataKey, "{"))
	if got, ok, err := FromIncomingContext(below); err != nil || !ok || !same(got, want) {
		t.Fatalf("FromIncomingContext below WithDecoded = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	if again, got, _, _ := WithDecoded(below); again != below || !same(got, want) {
		t.Fatalf("WithDecoded twice decoded again: %+v", got)
	}
	if _, ok, err := FromIncomingContext(metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, "{"))); ok || err == nil {
		t.Fatalf("without WithDecoded the metadata is decoded: ok=%v err=%v, want an error", ok, err)
	}
}

func TestMatchFieldsUnknownFieldsMatch(t *testing.T) {
	s := FromSelectors(nil, fields.ParseSelectorOrDie("spec.nodeName=a,status.phase!=Running"))
	known := func(f string) bool { return f == "spec.nodeName" }
	if !s.MatchFields(fields.Set{"spec.nodeName": "a", "status.phase": "Running"}, known) {
		t.Error("an unknown field must not exclude")
	}
	if s.MatchFields(fields.Set{"spec.nodeName": "b"}, known) {
		t.Error("a known field must exclude")
	}
}

// FuzzSelection: any selector upstream accepts survives the wire, and the
// rebuilt label selector agrees with the original on label sets drawn from
// the input; arbitrary metadata never panics.
func FuzzSelection(f *testing.F) {
	f.Add("app=web,tier!=1", "metadata.name=x", "app", "web")
	f.Add("a in (1,2),!b,c>5", "spec.x!=y\\,z", "c", "7")
	f.Add("x notin (a),y", "", "y", "")
	f.Fuzz(func(t *testing.T, label, field, key, value string) {
		_, _, _ = FromIncomingContext(metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, label+field)))
		ls, err := labels.Parse(label)
		if err != nil {
			return
		}
		fs, err := fields.ParseSelector(field)
		if err != nil {
			return
		}
		s := FromSelectors(ls, fs)
		got := roundTrip(t, s)
		if !same(got, s) {
			t.Fatalf("round trip changed %+v into %+v", s, got)
		}
		rebuilt := got.LabelSelector()
		for _, set := range []labels.Set{{}, {key: value}, {key: value, "app": "web"}} {
			if rebuilt.Matches(set) != ls.Matches(set) {
				t.Fatalf("%q on %v: rebuilt %v, upstream %v", label, set, rebuilt.Matches(set), ls.Matches(set))
			}
		}
		fset := fields.Set{key: value}
		if fs.Matches(fset) && !got.MatchFields(fset, func(string) bool { return true }) {
			t.Fatalf("%q drops %v", field, fset)
		}
	})
}
