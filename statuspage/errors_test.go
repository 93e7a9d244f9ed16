package statuspage

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRecentErrorsNewestFirst(t *testing.T) {
	r := NewRecentErrors(3)
	if got := r.List(); got == nil || len(got) != 0 {
		t.Fatalf("empty List = %#v, want an empty non-nil slice", got)
	}
	for i := 1; i <= 5; i++ {
		r.Add(ErrorRecord{RequestID: fmt.Sprint("req-", i), Time: time.Unix(int64(i), 0)})
	}
	var ids []string
	for _, rec := range r.List() {
		ids = append(ids, rec.RequestID)
	}
	if got, want := strings.Join(ids, ","), "req-5,req-4,req-3"; got != want {
		t.Errorf("List IDs = %s, want %s", got, want)
	}
}

func TestRecentErrorsBeforeWrap(t *testing.T) {
	r := NewRecentErrors(4)
	r.Add(ErrorRecord{RequestID: "a"})
	r.Add(ErrorRecord{RequestID: "b"})
	got := r.List()
	if len(got) != 2 {
		t.Fatalf("List has %d records, want 2", len(got))
	}
	if got[0].RequestID != "b" || got[1].RequestID != "a" {
		t.Errorf("List = %s, %s, want b, a", got[0].RequestID, got[1].RequestID)
	}
}

func TestRecentErrorsDefaultCapacity(t *testing.T) {
	r := NewRecentErrors(0)
	for range DefaultRecentErrors + 7 {
		r.Add(ErrorRecord{})
	}
	if got := len(r.List()); got != DefaultRecentErrors {
		t.Errorf("List has %d records, want %d", got, DefaultRecentErrors)
	}
}

func TestRecentErrorsSetsTime(t *testing.T) {
	r := NewRecentErrors(1)
	before := time.Now()
	r.Add(ErrorRecord{Error: "boom"})
	got := r.List()[0].Time
	if got.Before(before) || got.After(time.Now()) {
		t.Errorf("Time = %v, want the time of Add", got)
	}
}

func TestRecentErrorsTruncates(t *testing.T) {
	r := NewRecentErrors(1)
	long := strings.Repeat("é", MaxErrorBytes) // 2 bytes each
	r.Add(ErrorRecord{Error: long, Model: long, RequestID: "req-1"})
	got := r.List()[0]

	if len(got.Error) > MaxErrorBytes {
		t.Errorf("Error has %d bytes, want at most %d", len(got.Error), MaxErrorBytes)
	}
	if len(got.Model) > MaxFieldBytes {
		t.Errorf("Model has %d bytes, want at most %d", len(got.Model), MaxFieldBytes)
	}
	for name, s := range map[string]string{"Error": got.Error, "Model": got.Model} {
		if !utf8.ValidString(s) {
			t.Errorf("%s is not valid UTF-8 after truncation", name)
		}
		if !strings.HasSuffix(s, "…") {
			t.Errorf("%s = %q…, want it to end in an ellipsis", name, s[:20])
		}
	}
	if got.RequestID != "req-1" {
		t.Errorf("RequestID = %q, want the short value unchanged", got.RequestID)
	}
}

func TestRecentErrorsConcurrent(t *testing.T) {
	r := NewRecentErrors(16)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				r.Add(ErrorRecord{RequestID: fmt.Sprint(w, "-", i)})
				_ = r.List()
			}
		})
	}
	wg.Wait()
	if got := len(r.List()); got != 16 {
		t.Errorf("List has %d records, want 16", got)
	}
}
