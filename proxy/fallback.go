package proxy

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// serveFallback forwards a request on a path under /api/ or /v1/ that the
// proxy has no route for, such as a route of a newer Ollama version, and
// relays the node's response as it is.
//
// A request whose body names a model, in a JSON object or in a multipart
// form field as /v1/audio/transcriptions sends it, goes to a node that
// lists the model. It counts as inference: it takes a slot on the node,
// and the key's quotas and allowed_models apply. Any other request goes
// to any usable node and takes only the key's request rate and
// max_concurrent, like /api/show. A path that no node serves gets the
// node's own 404.
func (s *Server) serveFallback(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	rs.path = string(ctx.Path())
	model, err := fallbackModel(&ctx.Request)
	if err != nil {
		writeError(ctx, rt, fasthttp.StatusBadRequest, err.Error())
		return
	}
	f := fields{rawModel: model, model: wire.ModelKey(model), asSent: true}
	if model != "" {
		rt.inference = true
		rs.route = rt
		rs.model = f.model
	}
	if !s.admit(ctx, rt, rs, f) {
		return
	}
	s.forward(ctx, rt, rs, f)
}

// fallbackModel returns the model that a request body names in "model":
// a string field of a JSON object, or a form field of a multipart body. It
// returns "" for any other body, which the node then validates. It returns
// an error for a JSON object with a duplicate key, which parseObject
// rejects on every route, because the node would read another model than
// the one whose allowed_models the proxy checks.
func fallbackModel(req *fasthttp.Request) (string, error) {
	body := req.Body()
	if len(body) == 0 {
		return "", nil
	}
	mediaType, params, err := mime.ParseMediaType(string(req.Header.ContentType()))
	if err == nil && mediaType == "multipart/form-data" {
		return formField(body, params["boundary"], "model"), nil
	}
	var p fastjson.Parser
	v, err := parseObject(&p, body)
	if err != nil {
		if isJSONObject(body) {
			return "", err
		}
		return "", nil
	}
	model, err := stringField(v, "model")
	if err != nil {
		return "", nil
	}
	return model, nil
}

// isJSONObject reports whether body starts with a JSON object, as
// parseObject reads it.
func isJSONObject(body []byte) bool {
	v, err := firstValue(body)
	return err == nil && v.Type() == fastjson.TypeObject
}

// maxFormField bounds the value that formField reads, far above the
// length of any model name.
const maxFormField = 1 << 10

// formField returns the value of the field name in a multipart body, or ""
// when the body has no such field or does not parse.
func formField(body []byte, boundary, name string) string {
	if boundary == "" {
		return ""
	}
	r := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		part, err := r.NextPart()
		if err != nil {
			return ""
		}
		if part.FormName() != name || part.FileName() != "" {
			continue
		}
		value, err := io.ReadAll(io.LimitReader(part, maxFormField+1))
		if err != nil || len(value) > maxFormField {
			return ""
		}
		return string(value)
	}
}
