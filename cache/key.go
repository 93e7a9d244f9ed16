package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// NormalizeModel returns the model name as keys and purges use it, which
// is wire.ModelKey: lower case, without the default registry and
// namespace, and with Ollama's default tag ":latest" when the name has no
// tag. Ollama serves every such spelling from the same model.
func NormalizeModel(name string) string {
	return wire.ModelKey(name)
}

// keyBufPool contains the buffers in which canonical bodies are written before
// hashing, so that a request does not allocate one the size of its body.
var keyBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

// keyBufMaxBytes bounds the buffers put back into keyBufPool, so that one
// large body does not keep its buffer alive in the pool.
const keyBufMaxBytes = 1 << 20

func getKeyBuf() *[]byte { return keyBufPool.Get().(*[]byte) }

func putKeyBuf(b *[]byte) {
	if cap(*b) > keyBufMaxBytes {
		return
	}
	*b = (*b)[:0]
	keyBufPool.Put(b)
}

// hashHex returns the lower-case hex SHA-256 of b.
func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// responseKey returns the key of a whole response: the hash of the route and
// the canonical body, in which the model is normalized and the members
// that never change the response are left out. So are members set to null,
// which Go's encoding/json, and so Ollama, reads as absent.
func responseKey(
	routePath, model string,
	top []member,
	ignored func(key string) bool,
) (string, error) {
	bp := getKeyBuf()
	defer putKeyBuf(bp)
	buf := append((*bp)[:0], routePath...)
	buf = append(buf, 0)
	normalized := appendString(nil, model)
	buf, err := appendCanonicalObject(buf, top, func(m member) ([]byte, bool) {
		switch k := string(m.key); {
		case k == "model":
			return normalized, false
		case ignored(k) || m.value.Type() == fastjson.TypeNull:
			return nil, true
		}
		return nil, false
	})
	*bp = buf
	if err != nil {
		return "", err
	}
	return hashHex(buf), nil
}

// scopedKey returns the hash of name and key, so that the same request
// has a different key under each API key name.
func scopedKey(name, key string) string {
	buf := make([]byte, 0, len("key")+len(name)+len(key)+2)
	buf = append(buf, "key"...)
	buf = append(buf, 0)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, key...)
	return hashHex(buf)
}

// itemKey returns the key of one embedding input: the hash of the route
// family, the model, the canonical parameters that change a vector, and
// the input text.
func itemKey(buf []byte, family, model string, params, text []byte) (string, []byte) {
	buf = append(buf[:0], "item"...)
	buf = append(buf, 0)
	buf = append(buf, family...)
	buf = append(buf, 0)
	buf = append(buf, model...)
	buf = append(buf, 0)
	buf = append(buf, params...)
	buf = append(buf, 0)
	buf = appendString(buf, text)
	return hashHex(buf), buf
}
