package cache

import (
	"encoding/json"

	"github.com/valyala/fastjson"
)

// choiceLogprobs is the logprobs member of a /v1 choice, joined over the
// chunks of a stream. Ollama v0.17.4 sends {"content":[...]} on chat
// choices, with the entries of the tokens that one chunk carries, and gives
// completions choices a logprobs member of the same type
// (openai.ChoiceLogprobs). OpenAI's legacy completions form has the arrays
// tokens, token_logprobs, top_logprobs and text_offset instead. Each array
// member is joined in the order received, and any other member keeps its
// last value, so that one whole object's logprobs is kept as it came.
type choiceLogprobs struct {
	members []logprobsMember
	// other is the last value received that is not an object, used only
	// when no object was received.
	other []byte
}

// logprobsMember is one member of choiceLogprobs, in the order of its
// first appearance.
type logprobsMember struct {
	key      string
	isArray  bool
	elements []json.RawMessage // the joined elements of an array member
	value    []byte            // the last value of any other member
}

// addLogprobs adds the logprobs member of one /v1 choice. A missing or
// null member adds nothing.
func (a *Aggregator) addLogprobs(v *fastjson.Value) {
	if v == nil || v.Type() == fastjson.TypeNull {
		return
	}
	l := &a.choiceLogprobs
	if v.Type() != fastjson.TypeObject {
		old := len(l.other)
		l.other = appendValue(l.other[:0], v)
		a.growBy(old, len(l.other))
		return
	}
	v.GetObject().Visit(func(key []byte, mv *fastjson.Value) {
		m := l.member(key)
		switch {
		case mv.Type() == fastjson.TypeArray:
			// A member that was not an array before is replaced.
			if !m.isArray {
				m.isArray, m.value = true, nil
			}
			a.addRaw(&m.elements, mv.GetArray())
		case mv.Type() == fastjson.TypeNull && m.isArray:
			// A chunk without entries of its own keeps those received.
		default:
			m.isArray, m.elements = false, nil
			old := len(m.value)
			m.value = appendValue(m.value[:0], mv)
			a.growBy(old, len(m.value))
		}
	})
}

// growBy counts a value that replaced one of old bytes with one of n
// bytes, so that a member sent again in every chunk counts once.
func (a *Aggregator) growBy(old, n int) {
	if n > old {
		a.grow(int64(n - old))
	}
}

// member returns the member named key, adding it when new.
func (l *choiceLogprobs) member(key []byte) *logprobsMember {
	for i := range l.members {
		if l.members[i].key == string(key) {
			return &l.members[i]
		}
	}
	l.members = append(l.members, logprobsMember{key: string(key)})
	return &l.members[len(l.members)-1]
}

// encode returns the joined logprobs as one JSON value, or nil when none
// was received.
func (l *choiceLogprobs) encode() json.RawMessage {
	if len(l.members) == 0 {
		return l.other
	}
	out := []byte{'{'}
	for i, m := range l.members {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		if !m.isArray {
			out = append(out, m.value...)
			continue
		}
		out = append(out, '[')
		for k, e := range m.elements {
			if k > 0 {
				out = append(out, ',')
			}
			out = append(out, e...)
		}
		out = append(out, ']')
	}
	return append(out, '}')
}
