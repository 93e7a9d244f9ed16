package proxy

import (
	"math"

	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// progressLine is one progress line of a node, the failure of a node when
// failed is set, or the final line of a fan-out when node is nil.
type progressLine struct {
	node   *balancer.Node
	line   []byte
	failed bool
}

// progressMerge turns the progress of every node of a fan-out into the
// stream one Ollama server would send, so that a client such as the
// ollama CLI draws one bar per layer. A status without a digest ("pulling
// manifest", "writing manifest") is sent once every node still running has
// reported it, so that a stage is shown when the whole fan-out reached it.
// A layer's progress is that of the slowest running node, counting nodes
// that have not reported the layer yet as at 0, and it is sent only when
// it grows, so it never moves back. A node that failed no longer counts,
// so the stages and progress that only it held back go out with its
// failure, and the other nodes' later ones follow as they come. With a
// single target, its lines pass unchanged.
type progressMerge struct {
	targets int
	failed  map[*balancer.Node]bool
	stages  map[string]*stageProgress // by status
	layers  map[string]*layerProgress // by digest
	// order lists the stages and layers by their first line, the order in
	// which a failure sends what they held back.
	order []progressKey
}

// progressKey names a stage by its status, or a layer by its digest.
type progressKey struct {
	status, digest string
}

type stageProgress struct {
	line     []byte                  // the first line reported
	reported map[*balancer.Node]bool // the running nodes that reported it
	sent     bool
}

type layerProgress struct {
	status    string
	total     int64
	completed map[*balancer.Node]int64 // of the running nodes
	sent      int64                    // -1 before the first line
}

func newProgressMerge(targets []*balancer.Node) *progressMerge {
	return &progressMerge{
		targets: len(targets),
		failed:  map[*balancer.Node]bool{},
		stages:  map[string]*stageProgress{},
		layers:  map[string]*layerProgress{},
	}
}

// line returns what to send for pl: the line itself, merged lines, or
// nothing.
func (m *progressMerge) line(pl progressLine) []byte {
	if pl.node == nil || m.targets == 1 {
		return pl.line
	}
	if pl.failed {
		return m.fail(pl.node)
	}
	v, err := fastjson.ParseBytes(pl.line)
	if err != nil || v.Type() != fastjson.TypeObject {
		return pl.line
	}
	status := string(v.GetStringBytes("status"))
	digest := string(v.GetStringBytes("digest"))
	if digest == "" {
		return m.stage(pl.node, status, pl.line)
	}
	return m.layer(pl.node, status, digest, v.GetInt64("total"), v.GetInt64("completed"))
}

// running returns the number of targets that have not failed.
func (m *progressMerge) running() int { return m.targets - len(m.failed) }

func (m *progressMerge) stage(n *balancer.Node, status string, line []byte) []byte {
	st := m.stages[status]
	if st == nil {
		if line[len(line)-1] != '\n' {
			line = append(line, '\n')
		}
		st = &stageProgress{line: line, reported: map[*balancer.Node]bool{}}
		m.stages[status] = st
		m.order = append(m.order, progressKey{status: status})
	}
	if st.sent {
		return nil
	}
	st.reported[n] = true
	return m.flushStage(st)
}

// flushStage returns the stage's line once every running node reported it.
func (m *progressMerge) flushStage(st *stageProgress) []byte {
	if st.sent || m.running() == 0 || len(st.reported) < m.running() {
		return nil
	}
	st.sent = true
	return st.line
}

func (m *progressMerge) layer(n *balancer.Node, status, digest string, total, completed int64) []byte {
	l := m.layers[digest]
	if l == nil {
		l = &layerProgress{completed: map[*balancer.Node]int64{}, sent: -1}
		m.layers[digest] = l
		m.order = append(m.order, progressKey{digest: digest})
	}
	l.status, l.total = status, total
	l.completed[n] = completed
	return m.flushLayer(digest, l)
}

// flushLayer returns a line with the layer's progress over the running
// nodes when it grew since the last line sent.
func (m *progressMerge) flushLayer(digest string, l *layerProgress) []byte {
	if m.running() == 0 {
		return nil
	}
	low := int64(0)
	if len(l.completed) == m.running() {
		low = math.MaxInt64
		for _, c := range l.completed {
			low = min(low, c)
		}
	}
	if low <= l.sent {
		return nil
	}
	l.sent = low
	out := wire.AppendProgress(nil, l.status, digest, l.total, low)
	return append(out, '\n')
}

// fail stops counting n and returns, in the order of their first lines,
// the stages and layer progress that n alone held back. The channel of a
// fan-out delivers every line of n before its failure, so no line of n
// arrives after it.
func (m *progressMerge) fail(n *balancer.Node) []byte {
	if m.failed[n] {
		return nil
	}
	m.failed[n] = true
	var out []byte
	for _, k := range m.order {
		if k.digest == "" {
			st := m.stages[k.status]
			delete(st.reported, n)
			out = append(out, m.flushStage(st)...)
			continue
		}
		l := m.layers[k.digest]
		delete(l.completed, n)
		out = append(out, m.flushLayer(k.digest, l)...)
	}
	return out
}
