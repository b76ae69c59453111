package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/harikube/harikube/pkg/datastore"
)

// CheckPath is where a running server checks a datastore's index with the
// definitions it serves: GET with the query parameters datastore (a name the
// server logs; default "default"), after (a revision) and limit, answered
// with a CheckPage. It is a non-resource URL, so only
// users RBAC grants it (cluster-admin) may run the check.
const CheckPath = "/harikube/v1/datastore/check"

// CheckPage is one page of a running server's index check.
type CheckPage struct {
	Report *datastore.CheckReport `json:"report"`
	Last   int64                  `json:"last"` // pass as after for the next page
	More   bool                   `json:"more"`
}

// maxCheckPage bounds the rows of one page, so that a page ends well within
// the apiserver's request timeout.
const maxCheckPage = 5000

func checkHandler(find func(name string) (*datastore.Datastore, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		after, limit, err := checkParams(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ds, err := find(r.URL.Query().Get("datastore"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		report, last, more, err := ds.Check(r.Context(), after, limit)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(CheckPage{Report: report, Last: last, More: more})
	})
}

func checkParams(r *http.Request) (after, limit int64, err error) {
	q := r.URL.Query()
	limit = maxCheckPage
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < 0 {
			return 0, 0, fmt.Errorf("after: want a revision (a non-negative integer), got %q", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.ParseInt(v, 10, 64); err != nil || limit <= 0 || limit > maxCheckPage {
			return 0, 0, fmt.Errorf("limit: want 1 to %d, got %q", maxCheckPage, v)
		}
	}
	return after, limit, nil
}
