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

func TestProgressMergeDropsFailedNode(t *testing.T) {
	u, _ := url.Parse("http://n:11434")
	a, b, c := balancer.NewNode("a", u, 1, 1), balancer.NewNode("b", u, 1, 1),
		balancer.NewNode("c", u, 1, 1)
	m := newProgressMerge([]*balancer.Node{a, b, c})
	layer := func(completed string) string {
		return `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100` + completed + `}`
	}
	steps := []struct {
		node   *balancer.Node
		failed bool
		line   string
		want   string // "" when nothing is sent
	}{
		{a, false, `{"status":"pulling manifest"}`, ""},
		{b, false, `{"status":"pulling manifest"}`, ""},
		{c, false, `{"status":"pulling manifest"}`, `{"status":"pulling manifest"}`},
		{a, false, layer(`,"completed":100`), `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100}`},
		{b, false, layer(`,"completed":100`), ""},
		{a, false, `{"status":"writing manifest"}`, ""},
		{b, false, `{"status":"writing manifest"}`, ""},
		// c fails before it reports the layer: the layer and the stage
		// that only c held back go out in the order of their first lines.
		{c, true, "", `{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":100}` +
			"\n" + `{"status":"writing manifest"}`},
		{c, true, "", ""},
		{a, false, `{"status":"removing unused layers"}`, ""},
		{b, false, `{"status":"removing unused layers"}`, `{"status":"removing unused layers"}`},
		// With every node failed, nothing more is sent.
		{a, true, "", ""},
		{b, true, "", ""},
		{nil, false, `{"error":"pull failed"}`, `{"error":"pull failed"}`},
	}
	for i, st := range steps {
		pl := progressLine{node: st.node, failed: st.failed, line: []byte(st.line)}
		if st.failed {
			pl.line = nil
		}
		got := strings.TrimSuffix(string(m.line(pl)), "\n")
		if got != st.want {
			t.Errorf("step %d: sent %q, want %q", i, got, st.want)
		}
	}
}

func TestProgressMergePassesSingleNodeLines(t *testing.T) {
	u, _ := url.Parse("http://n:11434")
	a := balancer.NewNode("a", u, 1, 1)
	m := newProgressMerge([]*balancer.Node{a})
	for _, line := range []string{
		`{"status":"using existing layer sha256:01","extra":true}` + "\n",
		`{"status":"using existing layer sha256:01","extra":true}` + "\n",
		`{"status":"pulling 0123abcd","digest":"sha256:0123abcd","total":100,"completed":7,"x":1}` + "\n",
	} {
		if got := string(m.line(progressLine{node: a, line: []byte(line)})); got != line {
			t.Errorf("sent %q, want the node's line %q unchanged", got, line)
		}
	}
}
