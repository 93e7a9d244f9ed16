package cache

import (
	"time"

	"github.com/valyala/fastjson"
)

// jsonKinds is a set of JSON value types, as bits.
type jsonKinds uint8

const (
	kString jsonKinds = 1 << iota
	kNumber
	kBool
	kArray
	kObject
)

// has reports whether the type of v is in k. JSON null is in every set,
// because Go's encoding/json, which Ollama decodes requests with, leaves
// a field unset for null.
func (k jsonKinds) has(v *fastjson.Value) bool {
	switch v.Type() {
	case fastjson.TypeNull:
		return true
	case fastjson.TypeString:
		return k&kString != 0
	case fastjson.TypeNumber:
		return k&kNumber != 0
	case fastjson.TypeTrue, fastjson.TypeFalse:
		return k&kBool != 0
	case fastjson.TypeArray:
		return k&kArray != 0
	case fastjson.TypeObject:
		return k&kObject != 0
	}
	return false
}

// The types of the members of Ollama's request structs, by route
// (api.GenerateRequest, api.ChatRequest, api.EmbedRequest,
// api.EmbeddingRequest and the structs of its openai package, v0.17.4).
// Ollama rejects a request with 400 when a member has another type, so
// the cache must not serve it. format, stop and input are declared as any
// JSON, and the handlers reject other types than these later. Members not
// listed are not checked.
var (
	nativeMembers = map[string]jsonKinds{
		"model": kString, "stream": kBool, "options": kObject, "format": kString | kObject,
		"think": kBool | kString, "logprobs": kBool, "top_logprobs": kNumber,
	}
	generateMembers = map[string]jsonKinds{
		"prompt": kString, "suffix": kString, "system": kString, "template": kString,
		"context": kArray, "raw": kBool, "images": kArray,
	}
	chatMembers  = map[string]jsonKinds{"messages": kArray, "tools": kArray}
	embedMembers = map[string]jsonKinds{
		"model": kString, "input": kString | kArray, "truncate": kBool, "options": kObject,
		"dimensions": kNumber,
	}
	embeddingsMembers = map[string]jsonKinds{"model": kString, "prompt": kString, "options": kObject}
	v1Members         = map[string]jsonKinds{
		"model": kString, "stream": kBool, "stream_options": kObject, "max_tokens": kNumber,
		"seed": kNumber, "temperature": kNumber, "top_p": kNumber, "frequency_penalty": kNumber,
		"presence_penalty": kNumber, "stop": kString | kArray,
	}
	v1ChatMembers = map[string]jsonKinds{
		"messages": kArray, "tools": kArray, "response_format": kObject, "logprobs": kBool,
		"top_logprobs": kNumber,
	}
	v1CompletionsMembers = map[string]jsonKinds{"prompt": kString, "suffix": kString}
	v1EmbeddingsMembers  = map[string]jsonKinds{
		"model": kString, "input": kString | kArray, "dimensions": kNumber, "encoding_format": kString,
	}
)

// memberTables returns the member types of r, most general first.
func memberTables(r route) []map[string]jsonKinds {
	switch r {
	case routeGenerate:
		return []map[string]jsonKinds{nativeMembers, generateMembers}
	case routeChat:
		return []map[string]jsonKinds{nativeMembers, chatMembers}
	case routeEmbed:
		return []map[string]jsonKinds{embedMembers}
	case routeEmbeddings:
		return []map[string]jsonKinds{embeddingsMembers}
	case routeV1Chat:
		return []map[string]jsonKinds{v1Members, v1ChatMembers}
	case routeV1Completions:
		return []map[string]jsonKinds{v1Members, v1CompletionsMembers}
	case routeV1Embeddings:
		return []map[string]jsonKinds{v1EmbeddingsMembers}
	}
	return nil
}

// invalidMember returns why Ollama would reject the request v on r for
// the type or value of a member, or "" when it would not for any member
// that the tables list. keep_alive must be a number or a duration string,
// and stream_options.include_usage a boolean.
//
// NOTE: only the top-level members and stream_options are checked, not
// the members of messages, tools or options, so a request that Ollama
// rejects for a message's content can still be served from the cache.
func invalidMember(r route, v *fastjson.Value) string {
	obj, err := v.Object()
	if err != nil {
		return "body is not a JSON object"
	}
	tables := memberTables(r)
	reason := ""
	obj.Visit(func(key []byte, m *fastjson.Value) {
		if reason != "" {
			return
		}
		name := string(key)
		for _, t := range tables {
			if kinds, ok := t[name]; ok && !kinds.has(m) {
				reason = "member " + name + " has a type that Ollama rejects"
				return
			}
		}
	})
	if reason != "" {
		return reason
	}
	if !r.isV1() && !validKeepAlive(v.Get("keep_alive")) {
		return "keep_alive is not a number or a duration"
	}
	if r.isV1() {
		if u := v.Get("stream_options", "include_usage"); u != nil && !kBool.has(u) {
			return "member stream_options.include_usage has a type that Ollama rejects"
		}
	}
	return ""
}

// validKeepAlive reports whether Ollama accepts v as keep_alive: absent,
// null, a number of seconds or a string that time.ParseDuration reads.
func validKeepAlive(v *fastjson.Value) bool {
	if v == nil {
		return true
	}
	switch v.Type() {
	case fastjson.TypeNull, fastjson.TypeNumber:
		return true
	case fastjson.TypeString:
		_, err := time.ParseDuration(string(v.GetStringBytes()))
		return err == nil
	}
	return false
}
