package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

// objectWithKeys returns a JSON object with the keys k0 to k(n-1), then
// the keys in extra, each with the value 1, and last "model":"m".
func objectWithKeys(n int, extra ...string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		fmt.Fprintf(&b, `"k%d":1,`, i)
	}
	for _, k := range extra {
		fmt.Fprintf(&b, `"%s":1,`, k)
	}
	b.WriteString(`"model":"m"}`)
	return b.String()
}

func TestDuplicateKeyAnyCount(t *testing.T) {
	cases := []struct {
		name  string
		keys  int
		extra []string
		want  string
	}{
		{"few keys, none twice", 10, nil, ""},
		{"few keys, one twice", 10, []string{"k3"}, "k3"},
		{"buffer full, none twice", 31, nil, ""},
		{"past the buffer, none twice", 33, nil, ""},
		{"past the buffer, one twice", 40, []string{"k39"}, "k39"},
		{"past the buffer, first key again", 40, []string{"k0"}, "k0"},
		{"many keys, one in upper case", 5000, []string{"K17"}, "K17"},
		{"many keys, Kelvin sign", 5000, []string{"\u212a17"}, "\u212a17"},
		{"many keys, model in another case", 5000, []string{"MODEL"}, "model"},
		{"many keys, none twice", 5000, nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := fastjson.Parse(objectWithKeys(c.keys, c.extra...))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := duplicateKey(v)
			if got != c.want {
				t.Errorf("duplicateKey = %q, want %q", got, c.want)
			}
		})
	}
}

func TestFoldCaseMatchesEqualFold(t *testing.T) {
	parts := []string{"a", "A", "k", "K", "\u212a", "s", "S", "\u017f", "\u03c3", "\u03c2", "\u03a3",
		"i", "I", "\u0130", "\u0131", "\xff", "\xfe", "\u00e9", "\u00c9", "1", "_", "\u1e9e", "\u00df"}
	var words []string
	for _, a := range parts {
		for _, b := range parts {
			words = append(words, a+b)
		}
	}
	for _, x := range words {
		for _, y := range words {
			want := bytes.EqualFold([]byte(x), []byte(y))
			got := bytes.Equal(foldCase([]byte(x)), foldCase([]byte(y)))
			if got != want {
				t.Errorf("%q and %q: folded forms equal %v, EqualFold %v", x, y, got, want)
			}
		}
	}
}

// BenchmarkDuplicateKeyManyKeys checks a body with 2,000 keys, past the
// buffer of the quadratic scan. make bench runs each benchmark 20,000
// times, so a larger body would make it slow.
func BenchmarkDuplicateKeyManyKeys(b *testing.B) {
	v, err := fastjson.Parse(objectWithKeys(2000))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if dup, _ := duplicateKey(v); dup != "" {
			b.Fatal(dup)
		}
	}
}
