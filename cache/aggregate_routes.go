package cache

import (
	"fmt"

	"github.com/valyala/fastjson"
)

// ndjsonLine reads one line of an /api response: a chunk with done false, or
// the final line with done true and the metrics.
func (a *Aggregator) ndjsonLine(line []byte) error {
	if len(line) == 0 {
		return nil
	}
	if a.done {
		return fmt.Errorf("%w: data after the final line", ErrInvalidResponse)
	}
	v, err := a.parseObject(line)
	if err != nil {
		return err
	}

	if a.route == routeGenerate {
		a.add(&a.text, v.GetStringBytes("response"))
		a.add(&a.thinking, v.GetStringBytes("thinking"))
		a.addRaw(&a.toolCalls, v.GetArray("tool_calls"))
	} else if m := v.Get("message"); m != nil {
		a.add(&a.text, m.GetStringBytes("content"))
		a.add(&a.thinking, m.GetStringBytes("thinking"))
		a.addRaw(&a.toolCalls, m.GetArray("tool_calls"))
	}
	a.addRaw(&a.logprobs, v.GetArray("logprobs"))

	if !v.GetBool("done") {
		return nil
	}
	// A load or an unload is Ollama's reply to a request without a prompt, so
	// there is nothing to cache.
	switch reason := string(v.GetStringBytes("done_reason")); reason {
	case "load", "unload":
		return fmt.Errorf("%w: done_reason %s", ErrInvalidResponse, reason)
	}
	a.done = true
	a.final = finalMembers(v)
	a.grow(int64(len(a.final)))
	return nil
}

// finalMembers returns an object holding the members of Ollama's final line
// that are not rebuilt at render time, in the order received.
func finalMembers(v *fastjson.Value) []byte {
	out := []byte{'{'}
	v.GetObject().Visit(func(key []byte, mv *fastjson.Value) {
		switch string(key) {
		case "model", "created_at", "response", "thinking", "message", "done",
			"tool_calls", "logprobs":
			return
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = appendString(out, key)
		out = append(out, ':')
		out = appendValue(out, mv)
	})
	return append(out, '}')
}

// v1Value reads one /v1 chunk, or the whole /v1 response object. part names
// the member of a choice that contains the text: "delta" in a chunk,
// "message" in an object. /v1/completions keeps the text in "text".
func (a *Aggregator) v1Value(v *fastjson.Value, part string) error {
	if fp := v.GetStringBytes("system_fingerprint"); len(fp) > 0 {
		a.fingerprint = string(fp)
	}
	if u := v.Get("usage"); u != nil && u.Type() == fastjson.TypeObject {
		a.usage = appendValue(a.usage[:0], u)
	}
	for _, ch := range v.GetArray("choices") {
		// Ollama returns one choice. A response with several is rejected, so
		// that it is never served as if it had one.
		if ch.GetInt("index") != 0 {
			return fmt.Errorf("%w: more than one choice", ErrInvalidResponse)
		}
		if a.route == routeV1Completions {
			a.add(&a.text, ch.GetStringBytes("text"))
		} else if m := ch.Get(part); m != nil {
			a.add(&a.text, m.GetStringBytes("content"))
			a.add(&a.thinking, m.GetStringBytes("reasoning"))
			a.mergeToolCalls(m.GetArray("tool_calls"))
		}
		a.addLogprobs(ch.Get("logprobs"))
		if fr := ch.GetStringBytes("finish_reason"); len(fr) > 0 {
			a.finishReason = string(fr)
		}
	}
	return nil
}

// mergeToolCalls adds OpenAI tool call deltas: a delta whose index names a
// known call extends its arguments, any other starts a new call. A whole
// response object gives each call whole, which merges the same way.
func (a *Aggregator) mergeToolCalls(deltas []*fastjson.Value) {
	for _, d := range deltas {
		call := a.toolCallAt(d.Get("index"))
		if id := d.GetStringBytes("id"); len(id) > 0 {
			call.id = string(id)
		}
		if kind := d.GetStringBytes("type"); len(kind) > 0 {
			call.kind = string(kind)
		}
		fn := d.Get("function")
		if fn == nil {
			continue
		}
		if name := fn.GetStringBytes("name"); len(name) > 0 && call.name == "" {
			call.name = string(name)
		}
		switch args := fn.Get("arguments"); {
		case args == nil:
		case args.Type() == fastjson.TypeString:
			a.add(&call.arguments, args.GetStringBytes())
		default:
			a.add(&call.arguments, appendValue(nil, args))
		}
	}
}

// toolCallAt returns the call that index names, adding it when new.
func (a *Aggregator) toolCallAt(index *fastjson.Value) *toolCall {
	i := int64(len(a.v1Calls))
	if index != nil && index.Type() == fastjson.TypeNumber {
		i = index.GetInt64()
		for k := range a.v1Calls {
			if a.v1Calls[k].index == i {
				return &a.v1Calls[k]
			}
		}
	}
	a.v1Calls = append(a.v1Calls, toolCall{index: i})
	return &a.v1Calls[len(a.v1Calls)-1]
}

// encode returns the call as an OpenAI tool call object.
func (c toolCall) encode() []byte {
	kind := c.kind
	if kind == "" {
		kind = "function"
	}
	out := []byte(`{"id":`)
	out = appendString(out, c.id)
	out = append(out, `,"index":`...)
	out = fmt.Appendf(out, "%d", c.index)
	out = append(out, `,"type":`...)
	out = appendString(out, kind)
	out = append(out, `,"function":{"name":`...)
	out = appendString(out, c.name)
	out = append(out, `,"arguments":`...)
	out = appendString(out, c.arguments)
	return append(out, "}}"...)
}
