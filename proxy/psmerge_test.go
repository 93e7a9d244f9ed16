package proxy

import (
	"testing"

	"github.com/valyala/fastjson"
)

// psList returns an /api/ps body with one entry for model "m". digest marks
// the node the entry came from.
func psList(digest, expiresAt string) []byte {
	return []byte(`{"models":[{"name":"m","digest":"` + digest + `","expires_at":"` + expiresAt + `"}]}`)
}

// winnerDigest returns the digest of the only merged entry.
func winnerDigest(t *testing.T, entries []listEntry) string {
	t.Helper()
	if len(entries) != 1 {
		t.Fatalf("merged %d entries, want 1", len(entries))
	}
	v, err := fastjson.ParseBytes(entries[0].raw)
	if err != nil {
		t.Fatalf("merged entry %s is not JSON: %v", entries[0].raw, err)
	}
	return string(v.GetStringBytes("digest"))
}

func TestMergePSLatestExpiryWins(t *testing.T) {
	cases := []struct {
		name string
		a, b string // expires_at on the first and second node
		want string // digest of the entry that must win
	}{
		{
			// 22:13:51+01:00 is 21:13:51Z, seven minutes before b.
			name: "zone offsets",
			a:    "2026-12-04T22:13:51+01:00",
			b:    "2026-12-04T21:20:00Z",
			want: "b",
		},
		{
			name: "zone offsets, first later",
			a:    "2026-12-04T21:20:00Z",
			b:    "2026-12-04T17:13:51.5-05:00",
			want: "b",
		},
		{
			name: "whole second before fraction",
			a:    "2026-12-04T21:13:51Z",
			b:    "2026-12-04T21:13:51.1Z",
			want: "b",
		},
		{
			name: "shorter fraction before longer",
			a:    "2026-12-04T21:13:51.5Z",
			b:    "2026-12-04T21:13:51.55Z",
			want: "b",
		},
		{
			name: "shorter fraction before nanoseconds",
			a:    "2026-12-04T21:13:51.5Z",
			b:    "2026-12-04T21:13:51.500000001+00:00",
			want: "b",
		},
		{
			name: "nanoseconds before shorter fraction",
			a:    "2026-12-04T21:13:51.123456789+00:00",
			b:    "2026-12-04T21:13:51.9Z",
			want: "b",
		},
		{
			name: "same instant keeps first",
			a:    "2026-12-04T22:13:51.5+01:00",
			b:    "2026-12-04T21:13:51.500Z",
			want: "a",
		},
		{
			name: "unparsable first loses",
			a:    "not a time",
			b:    "2026-12-04T21:13:51Z",
			want: "b",
		},
		{
			name: "unparsable second loses",
			a:    "2000-01-01T00:00:00Z",
			b:    "zzzz",
			want: "a",
		},
		{
			name: "empty loses",
			a:    "",
			b:    "2000-01-01T00:00:00Z",
			want: "b",
		},
		{
			name: "both unparsable keeps first",
			a:    "later",
			b:    "soon",
			want: "a",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			entries, ok := mergeModelLists([][]byte{psList("a", c.a), psList("b", c.b)}, "expires_at")
			if !ok {
				t.Fatal("merge reported no valid list")
			}
			if got := winnerDigest(t, entries); got != c.want {
				t.Errorf("expires_at %q vs %q: entry of node %q won, want %q", c.a, c.b, got, c.want)
			}
		})
	}
}

func TestMergePSMissingExpiryLoses(t *testing.T) {
	noField := []byte(`{"models":[{"name":"m","digest":"a"}]}`)
	entries, _ := mergeModelLists([][]byte{noField, psList("b", "2000-01-01T00:00:00Z")}, "expires_at")
	if got := winnerDigest(t, entries); got != "b" {
		t.Errorf("entry without expires_at beat a valid one: node %q won, want %q", got, "b")
	}
}

func TestMergeTagsFirstNodeWins(t *testing.T) {
	a := []byte(`{"models":[{"name":"m","digest":"a","modified_at":"2000-01-01T00:00:00Z"}]}`)
	b := []byte(`{"models":[{"name":"m","digest":"b","modified_at":"2026-12-04T21:13:51Z"}]}`)
	entries, _ := mergeModelLists([][]byte{a, b}, "")
	if got := winnerDigest(t, entries); got != "a" {
		t.Errorf("tags merge: node %q won, want the first node %q", got, "a")
	}
}

func TestMergeListsUnionSorted(t *testing.T) {
	a := []byte(`{"models":[{"name":"z"},{"name":"m"}]}`)
	b := []byte(`{"models":[{"name":"m"},{"name":"b"}]}`)
	entries, ok := mergeModelLists([][]byte{a, []byte("not json"), b}, "expires_at")
	if !ok {
		t.Fatal("merge reported no valid list")
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.name)
	}
	if len(names) != 3 || names[0] != "b" || names[1] != "m" || names[2] != "z" {
		t.Errorf("merged names %v, want [b m z]", names)
	}
}

func TestMergeListsNoValidBody(t *testing.T) {
	entries, ok := mergeModelLists([][]byte{[]byte("not json")}, "expires_at")
	if ok {
		t.Error("merge of invalid JSON reported a valid list")
	}
	if len(entries) != 0 {
		t.Errorf("merge of invalid JSON returned %d entries, want 0", len(entries))
	}
}
