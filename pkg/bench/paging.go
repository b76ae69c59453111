package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
)

// The paging workload times single pages of a paged LIST: the first, a
// middle and the last page of the 10 % selection, and the first (only)
// page of a 1-object selection. A page should cost what the page costs,
// wherever it starts and however many matches follow it.

// pagingWorkload is one selection paged with the bench's page size.
type pagingWorkload struct {
	key, title, labelSelector string
	match                     func(i int) bool
	// positions are the pages timed, by where they are in the LIST.
	positions []string
}

func pagingWorkloads() []pagingWorkload {
	return []pagingWorkload{
		{key: "page-10%", title: "label decile=7, limit=500 (10 %)", labelSelector: "decile=7", match: func(i int) bool { return i%10 == 7 },
			positions: []string{"first", "middle", "last"}},
		{key: "page-1", title: "label id=7, limit=500 (1 object)", labelSelector: "id=7", match: func(i int) bool { return i == 7 },
			positions: []string{"first"}},
	}
}

// pagingRows are the report's rows of the paging workload: key and title.
func pagingRows() (keys, titles []string) {
	for _, w := range pagingWorkloads() {
		for _, pos := range w.positions {
			keys = append(keys, w.key+"-"+pos)
			titles = append(titles, fmt.Sprintf("one page: %s, %s page", w.title, pos))
		}
	}
	return keys, titles
}

// page is one page of a walk: the continue token it was read with and the
// names it returned.
type page struct {
	token string
	names []string
}

// walkPages reads every page of the selection once, untimed, and checks
// that together they hold exactly the expected objects.
func walkPages(ctx context.Context, c dynamic.Interface, w pagingWorkload, n int) ([]page, error) {
	rc := c.Resource(widgets).Namespace(namespace)
	opts := metav1.ListOptions{LabelSelector: w.labelSelector, Limit: pageSize}
	var pages []page
	var all []string
	for {
		l, err := rc.List(ctx, opts)
		if err != nil {
			return nil, err
		}
		p := page{token: opts.Continue}
		for _, item := range l.Items {
			p.names = append(p.names, item.GetName())
		}
		pages = append(pages, p)
		all = append(all, p.names...)
		if opts.Continue = l.GetContinue(); opts.Continue == "" {
			break
		}
	}
	var want []string
	for i := 0; i < n; i++ {
		if w.match(i) {
			want = append(want, widgetName(i))
		}
	}
	slices.Sort(want)
	if err := checkNames(all, want); err != nil {
		return nil, fmt.Errorf("%s, all pages: wrong result: %w", w.title, err)
	}
	return pages, nil
}

// measurePaging times the pages of w at its positions; each run is checked against the page the walk read. A token
// that expired (a compaction between the walk and the runs) is read again
// from a new walk once.
func measurePaging(ctx context.Context, c dynamic.Interface, w pagingWorkload, n int, rep Repetition) ([]ListResult, error) {
	rc := c.Resource(widgets).Namespace(namespace)
	var out []ListResult
	pages, err := walkPages(ctx, c, w, n)
	if err != nil {
		return nil, err
	}
	for _, pos := range w.positions {
		index := map[string]int{"first": 0, "middle": len(pages) / 2, "last": len(pages) - 1}[pos]
		title := fmt.Sprintf("one page: %s, %s page", w.title, pos)
		res := ListResult{Workload: w.key + "-" + pos, Title: title, LabelSelector: w.labelSelector, Limit: pageSize,
			Expected: len(pages[index].names), Pages: 1}
		retried := false
		lat, err := timeRuns(rep, func() (time.Duration, error) {
			for {
				start := time.Now()
				l, err := rc.List(ctx, metav1.ListOptions{LabelSelector: w.labelSelector, Limit: pageSize, Continue: pages[index].token})
				d := time.Since(start)
				if apierrors.IsResourceExpired(err) && !retried {
					retried = true
					if pages, err = walkPages(ctx, c, w, n); err != nil {
						return 0, err
					}
					continue
				}
				if err != nil {
					return 0, fmt.Errorf("%s: %w", title, err)
				}
				var names []string
				for _, item := range l.Items {
					names = append(names, item.GetName())
				}
				if !slices.Equal(names, pages[index].names) {
					return 0, fmt.Errorf("%s: wrong result: %d objects %s, want %d %s", title, len(names), sample(names), len(pages[index].names), sample(pages[index].names))
				}
				res.Got = len(names)
				return d, nil
			}
		})
		if err != nil {
			return nil, err
		}
		res.Latency = lat
		out = append(out, res)
	}
	return out, nil
}

// measurePagingSize runs the paging workload at res.N and adds its pages
// to res.Lists; a selection with more matches than opts.MaxListObjects is
// skipped, as its LIST workload is.
func measurePagingSize(ctx context.Context, opts Options, con *console, c dynamic.Interface, res *Result) error {
	for _, w := range pagingWorkloads() {
		matches := 0
		for i := 0; i < res.N; i++ {
			if w.match(i) {
				matches++
			}
		}
		if opts.MaxListObjects > 0 && matches > opts.MaxListObjects {
			con.printf("  %-44s skipped: %d objects (--max-list-objects %d)\n", "one page: "+w.title, matches, opts.MaxListObjects)
			continue
		}
		lrs, err := measurePaging(ctx, c, w, res.N, opts.Repetition)
		if err != nil {
			return err
		}
		for _, lr := range lrs {
			res.Lists = append(res.Lists, lr)
			con.printf("  %-44s p50 %9.2f ms  p95 %9.2f ms  (%d runs, %d objects)\n", lr.Title, lr.P50Ms, lr.P95Ms, lr.Samples, lr.Got)
		}
	}
	return nil
}
