package proxy

import (
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

// mergedNames merges bodies with mergeModelLists, orders the result with
// sortLatestFirst and returns the model names in that order.
func mergedNames(t *testing.T, bodies []string, rankField, orderField string) []string {
	t.Helper()
	raw := make([][]byte, len(bodies))
	for i, b := range bodies {
		raw[i] = []byte(b)
	}
	entries, ok := mergeModelLists(raw, rankField)
	if !ok {
		t.Fatalf("merge of %v reported no valid list", bodies)
	}
	sortLatestFirst(entries, orderField)
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.name
	}
	return names
}

// modelList returns a {"models":[...]} body with the given entries, each a
// JSON object.
func modelList(entries ...string) string {
	return `{"models":[` + strings.Join(entries, ",") + `]}`
}

func TestSortLatestFirstOrder(t *testing.T) {
	cases := []struct {
		name    string
		entries []string
		want    []string
	}{
		{
			// 22:13:51+01:00 is 21:13:51Z, seven minutes before b, although
			// its text sorts after b's.
			name: "zone offsets",
			entries: []string{
				`{"name":"a","expires_at":"2026-12-04T22:13:51+01:00"}`,
				`{"name":"b","expires_at":"2026-12-04T21:20:00Z"}`,
				`{"name":"c","expires_at":"2026-12-04T17:30:00-05:00"}`,
			},
			want: []string{"c", "b", "a"},
		},
		{
			name: "fraction lengths",
			entries: []string{
				`{"name":"a-whole","expires_at":"2026-12-04T21:13:51Z"}`,
				`{"name":"b-tenths","expires_at":"2026-12-04T21:13:51.5Z"}`,
				`{"name":"c-hundredths","expires_at":"2026-12-04T21:13:51.55Z"}`,
				`{"name":"d-nanos","expires_at":"2026-12-04T21:13:51.500000001+00:00"}`,
			},
			want: []string{"c-hundredths", "d-nanos", "b-tenths", "a-whole"},
		},
		{
			name: "missing and invalid last in name order",
			entries: []string{
				`{"name":"z-missing"}`,
				`{"name":"y-invalid","expires_at":"soon"}`,
				`{"name":"x-empty","expires_at":""}`,
				`{"name":"w-number","expires_at":1796399775}`,
				`{"name":"m-old","expires_at":"2000-01-01T00:00:00Z"}`,
				`{"name":"n-zero","expires_at":"0001-01-01T00:00:00Z"}`,
				`{"name":"a-no-zone","expires_at":"2026-12-04T21:13:51"}`,
			},
			want: []string{"m-old", "n-zero", "a-no-zone", "w-number", "x-empty", "y-invalid", "z-missing"},
		},
		{
			name: "same instant in name order",
			entries: []string{
				`{"name":"c","expires_at":"2026-12-04T21:13:51.5Z"}`,
				`{"name":"a","expires_at":"2026-12-04T22:13:51.500+01:00"}`,
				`{"name":"b","expires_at":"2026-12-04T16:13:51.5-05:00"}`,
				`{"name":"later","expires_at":"2026-12-04T21:13:52Z"}`,
			},
			want: []string{"later", "a", "b", "c"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := mergedNames(t, []string{modelList(c.entries...)}, "expires_at", "expires_at")
			if !slices.Equal(got, c.want) {
				t.Errorf("order %v, want %v", got, c.want)
			}
		})
	}
}

func TestSortLatestFirstTiesAreDeterministic(t *testing.T) {
	entries := []string{
		`{"name":"d","modified_at":"2026-12-04T21:13:51Z"}`,
		`{"name":"b","modified_at":"2026-12-04T21:13:51Z"}`,
		`{"name":"c"}`,
		`{"name":"a"}`,
		`{"name":"e","modified_at":"2026-12-04T21:13:51Z"}`,
	}
	want := []string{"b", "d", "e", "a", "c"}
	// Every rotation of the input must give the same order.
	for i := range entries {
		rotated := append(slices.Clone(entries[i:]), entries[:i]...)
		got := mergedNames(t, []string{modelList(rotated...)}, "", "modified_at")
		if !slices.Equal(got, want) {
			t.Errorf("input %v: order %v, want %v", rotated, got, want)
		}
	}
}

func TestMergePSOrdersByWinningExpiry(t *testing.T) {
	// Node one has m expiring first, node two has it expiring last, so the
	// merged m takes node two's expiry and comes first.
	one := modelList(
		`{"name":"m","expires_at":"2026-12-04T21:00:00Z"}`,
		`{"name":"x","expires_at":"2026-12-04T21:30:00Z"}`,
	)
	two := modelList(
		`{"name":"m","expires_at":"2026-12-04T23:00:00+01:00"}`,
		`{"name":"y","expires_at":"2026-12-04T21:45:00Z"}`,
	)
	got := mergedNames(t, []string{one, two}, "expires_at", "expires_at")
	want := []string{"m", "y", "x"}
	if !slices.Equal(got, want) {
		t.Errorf("merged /api/ps order %v, want %v", got, want)
	}
}

func TestMergeTagsOrdersByFirstNodeEntry(t *testing.T) {
	// The tags merge keeps the first node's entry, so m is ordered by that
	// entry's modified_at even though node two modified m later.
	one := modelList(
		`{"name":"m","modified_at":"2026-12-04T10:00:00Z"}`,
		`{"name":"x","modified_at":"2026-12-04T12:00:00Z"}`,
	)
	two := modelList(
		`{"name":"m","modified_at":"2026-12-04T20:00:00Z"}`,
		`{"name":"y","modified_at":"2026-12-04T11:00:00.5-00:30"}`,
	)
	got := mergedNames(t, []string{one, two}, "", "modified_at")
	want := []string{"x", "y", "m"}
	if !slices.Equal(got, want) {
		t.Errorf("merged /api/tags order %v, want %v", got, want)
	}
}

func TestSortLatestFirstKeepsEntries(t *testing.T) {
	body := modelList(
		`{"name":"a","digest":"1","modified_at":"2026-12-04T10:00:00Z"}`,
		`{"name":"b","digest":"2","modified_at":"2026-12-04T11:00:00Z"}`,
	)
	entries, _ := mergeModelLists([][]byte{[]byte(body)}, "")
	sortLatestFirst(entries, "modified_at")
	if len(entries) != 2 {
		t.Fatalf("sorted %d entries, want 2", len(entries))
	}
	for _, e := range entries {
		v, err := fastjson.ParseBytes(e.raw)
		if err != nil {
			t.Fatalf("entry %s is not JSON: %v", e.raw, err)
		}
		if got := string(v.GetStringBytes("name")); got != e.name {
			t.Errorf("entry named %q carries the body of %q", e.name, got)
		}
	}
}
