package proxy

import (
	"net/url"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/balancer"
)

func TestProgressMergeFollowsSlowestNode(t *testing.T) {
	u, _ := url.Parse("http://n:11434")
	a, b := balancer.NewNode("a", u, 1, 1), balancer.NewNode("b", u, 1, 1)
	m := newProgressMerge([]*balancer.Node{a, b})
	layer := func(completed string) string {
		return `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100` + completed + `}`
	}
	steps := []struct {
		node *balancer.Node
		line string
		want string // "" when nothing is sent
	}{
		{a, `{"status":"pulling manifest"}`, ""},
		{b, `{"status":"pulling manifest"}`, `{"status":"pulling manifest"}`},
		{b, `{"status":"pulling manifest"}`, ""},
		{a, layer(""), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100}`},
		{a, layer(`,"completed":50`), ""},
		{b, layer(`,"completed":20`), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":20}`},
		{b, layer(`,"completed":70`), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":50}`},
		{a, layer(`,"completed":100`), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":70}`},
		{b, layer(`,"completed":100`), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":100}`},
		{b, `{"status":"writing manifest"}`, ""},
		{a, `{"status":"writing manifest"}`, `{"status":"writing manifest"}`},
		{a, `{"status":"writing manifest"}`, ""},
		{nil, `{"status":"success"}`, `{"status":"success"}`},
	}
	for i, st := range steps {
		got := strings.TrimSuffix(string(m.line(progressLine{node: st.node, line: []byte(st.line)})), "\n")
		if got != st.want {
			t.Errorf("step %d: sent %q, want %q", i, got, st.want)
		}
	}
}
