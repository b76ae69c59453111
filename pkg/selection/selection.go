// Package selection carries the selector part of a LIST or WATCH predicate from
// the apiserver's storage layer to the datastore, as gRPC metadata on the etcd
// request. It is shared by both ends so the encoding has exactly one definition.
package selection

import (
	"context"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc/metadata"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// MetadataKey names the gRPC metadata entry. The "-bin" suffix makes gRPC
// base64 the value on the wire, so field values that are not printable ASCII
// (CRD selectable fields may hold any string) survive unchanged.
const MetadataKey = "x-harikube-selection-bin"

// MaxEncodedSize bounds what the datastore accepts. The apiserver limits
// selectors far below this; anything larger is ignored, which only costs the
// pushdown, never correctness.
const MaxEncodedSize = 256 << 10

// Operator is an upstream selection operator ("=", "in", "!", "gt", ...).
type Operator = selection.Operator

// Requirement is one term of a label or field selector.
type Requirement struct {
	Key      string   `json:"k"`
	Operator Operator `json:"o"`
	Values   []string `json:"v,omitempty"`
}

// Selection is what the datastore may use to narrow a LIST, COUNT or WATCH.
// Every requirement must hold (AND), as in the upstream selectors.
type Selection struct {
	Labels []Requirement `json:"l,omitempty"`
	Fields []Requirement `json:"f,omitempty"`
	// Page marks the selection of a paged LIST whose reader takes a
	// Range's Count only as "rows follow the page" (the apiserver's
	// GetList): the datastore may then answer a lower bound above the page
	// instead of counting the rest of the range. It restricts nothing.
	Page bool `json:"p,omitempty"`
}

// Empty reports whether the selection restricts nothing.
func (s Selection) Empty() bool { return len(s.Labels) == 0 && len(s.Fields) == 0 }

// FromSelectors converts upstream selectors. What cannot be carried exactly
// is dropped — selectors that are not requirements (labels.Nothing), and
// requirements with strings that are not valid UTF-8, which JSON would
// alter: the datastore then returns a superset, which the apiserver filters
// again.
func FromSelectors(l labels.Selector, f fields.Selector) Selection {
	var s Selection
	if l != nil {
		if reqs, selectable := l.Requirements(); selectable {
			for _, r := range reqs {
				if req := (Requirement{Key: r.Key(), Operator: r.Operator(), Values: r.ValuesUnsorted()}); req.exact() {
					s.Labels = append(s.Labels, req)
				}
			}
		}
	}
	if f != nil {
		for _, r := range f.Requirements() {
			if req := (Requirement{Key: r.Field, Operator: r.Operator, Values: []string{r.Value}}); req.exact() {
				s.Fields = append(s.Fields, req)
			}
		}
	}
	return s
}

// exact reports whether the requirement survives JSON unchanged.
func (r Requirement) exact() bool {
	if !utf8.ValidString(r.Key) {
		return false
	}
	for _, v := range r.Values {
		if !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// Encode returns the wire form of s.
func (s Selection) Encode() (string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return "", fmt.Errorf("encode selection: %w", err)
	}
	return string(b), nil
}

// Decode parses the wire form produced by Encode.
func Decode(v string) (Selection, error) {
	var s Selection
	if len(v) > MaxEncodedSize {
		return s, fmt.Errorf("decode selection: %d bytes exceeds the limit of %d", len(v), MaxEncodedSize)
	}
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return Selection{}, fmt.Errorf("decode selection: %w", err)
	}
	return s, nil
}

// NewOutgoingContext attaches s to ctx for the next etcd request. An empty
// selection attaches nothing, so unfiltered requests (the watch cache's own
// list and watch) keep sharing one gRPC stream with progress requests.
func NewOutgoingContext(ctx context.Context, s Selection) (context.Context, error) {
	if s.Empty() {
		return ctx, nil
	}
	v, err := s.Encode()
	if err != nil {
		return ctx, err
	}
	return metadata.AppendToOutgoingContext(ctx, MetadataKey, v), nil
}

// FromIncomingContext returns the selection a client attached to a request.
// ok is false when there is none; an undecodable one is an error, which the
// datastore treats as "no selection". Below WithDecoded it returns the
// selection decoded there.
func FromIncomingContext(ctx context.Context) (s Selection, ok bool, err error) {
	if d, found := ctx.Value(decodedKey{}).(decoded); found {
		return d.s, d.ok, d.err
	}
	return decodeIncoming(ctx)
}

// WithDecoded decodes the request's selection once and keeps the result in
// the returned context, so that the layers a request passes through (the
// datastore's backend, then its SQL dialect) do not each decode it again.
func WithDecoded(ctx context.Context) (_ context.Context, s Selection, ok bool, err error) {
	if d, found := ctx.Value(decodedKey{}).(decoded); found {
		return ctx, d.s, d.ok, d.err
	}
	s, ok, err = decodeIncoming(ctx)
	return context.WithValue(ctx, decodedKey{}, decoded{s: s, ok: ok, err: err}), s, ok, err
}

type decodedKey struct{}

type decoded struct {
	s   Selection
	ok  bool
	err error
}

func decodeIncoming(ctx context.Context) (s Selection, ok bool, err error) {
	md, found := metadata.FromIncomingContext(ctx)
	if !found {
		return s, false, nil
	}
	vals := md.Get(MetadataKey)
	if len(vals) == 0 {
		return s, false, nil
	}
	if len(vals) > 1 {
		return s, false, fmt.Errorf("decode selection: %d metadata values, want 1", len(vals))
	}
	s, err = Decode(vals[0])
	if err != nil {
		return s, false, err
	}
	return s, !s.Empty(), nil
}

// LabelSelector rebuilds the upstream label selector from the label
// requirements. Requirements that upstream would reject are skipped, which
// widens the result and never narrows it.
func (s Selection) LabelSelector() labels.Selector {
	sel := labels.NewSelector()
	for _, r := range s.Labels {
		req, err := labels.NewRequirement(r.Key, r.Operator, r.Values)
		if err != nil {
			continue
		}
		sel = sel.Add(*req)
	}
	return sel
}

// MatchFields evaluates the field requirements with upstream semantics (a
// missing field reads as ""), except that a field the caller could not
// extract (known returns false) matches anything.
func (s Selection) MatchFields(set fields.Set, known func(field string) bool) bool {
	for _, r := range s.Fields {
		if !known(r.Key) || len(r.Values) != 1 {
			continue
		}
		v := set[r.Key]
		switch r.Operator {
		case selection.Equals, selection.DoubleEquals:
			if v != r.Values[0] {
				return false
			}
		case selection.NotEquals:
			if v == r.Values[0] {
				return false
			}
		}
	}
	return true
}
