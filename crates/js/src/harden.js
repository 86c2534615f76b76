// Sluice sandbox prelude. Evaluated once per engine instance, before the
// pipeline's script, in a context that only has the intrinsics Sluice asked
// for. It removes what must not be reachable, neutralises every path to a
// code-compiling constructor, makes assignment to inherited built-in names
// work on ordinary objects, and deep-freezes every intrinsic. It evaluates to
// `finalize(ctx)`, which the engine calls after the pipeline's script has run:
// it freezes `ctx`, the global object and everything the script put on it.
// Nothing here is reachable from the pipeline's script.
(function () {
  "use strict";
  const G = globalThis;
  const freeze = Object.freeze;
  const getPrototypeOf = Object.getPrototypeOf;
  const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
  const defineProperty = Object.defineProperty;
  const ownKeys = Reflect.ownKeys;
  const TypeErr = TypeError;
  const toStr = String;

  function disabled(what) {
    return function () {
      throw new TypeErr(what + " is not available in scripts");
    };
  }

  // 1. Every constructor that compiles source text: Function and its
  //    generator / async / async-generator siblings, which are reachable
  //    only through `.constructor` of their prototypes.
  const protos = [
    ["Function", getPrototypeOf(function () {})],
    ["GeneratorFunction", getPrototypeOf(function* () {})],
    ["AsyncFunction", getPrototypeOf(async function () {})],
    ["AsyncGeneratorFunction", getPrototypeOf(async function* () {})],
  ];
  let functionStandIn;
  for (const [name, proto] of protos) {
    const standIn = disabled("the " + name + " constructor");
    defineProperty(standIn, "prototype", { value: proto });
    defineProperty(proto, "constructor", {
      value: standIn, writable: false, enumerable: false, configurable: false,
    });
    if (name === "Function") functionStandIn = standIn;
  }
  defineProperty(G, "Function", {
    value: functionStandIn, writable: false, enumerable: false, configurable: false,
  });

  // 2. Globals that must not exist: code evaluation, async scheduling,
  //    shared memory, weak references (their callbacks run later).
  for (const name of [
    "eval", "Promise", "queueMicrotask", "WebAssembly", "SharedArrayBuffer",
    "Atomics", "WeakRef", "FinalizationRegistry", "AsyncDisposableStack",
  ]) {
    delete G[name];
  }
  delete Array.fromAsync;

  // 3. Error.prepareStackTrace / stackTraceLimit are accessors over
  //    engine-wide state (and would hand out stack frames' functions):
  //    replace them with constants.
  defineProperty(Error, "prepareStackTrace", {
    value: undefined, writable: false, enumerable: false, configurable: false,
  });
  defineProperty(Error, "stackTraceLimit", {
    value: 10, writable: false, enumerable: false, configurable: false,
  });

  // 4. Frozen prototypes make `obj.toString = f` or `err.name = "X"` throw,
  //    because an inherited read-only property blocks assignment. Turn those
  //    built-in data properties into accessors whose setter defines an own
  //    property on the receiver, so ordinary objects behave as before.
  function tame(obj, name) {
    const d = getOwnPropertyDescriptor(obj, name);
    if (d === undefined || !("value" in d)) return;
    const value = d.value;
    defineProperty(obj, name, {
      get: function () { return value; },
      set: function (v) {
        if (this === obj) {
          throw new TypeErr("cannot assign to '" + toStr(name) + "' of a frozen built-in");
        }
        defineProperty(this, name, {
          value: v, writable: true, enumerable: true, configurable: true,
        });
      },
      enumerable: d.enumerable,
      configurable: false,
    });
  }
  for (const key of ownKeys(Object.prototype)) tame(Object.prototype, key);
  const errorProtos = [Error.prototype];
  for (const name of [
    "EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError",
    "URIError", "InternalError", "AggregateError", "SuppressedError",
  ]) {
    if (typeof G[name] === "function") errorProtos.push(G[name].prototype);
  }
  for (const proto of errorProtos) {
    for (const key of ["constructor", "name", "message", "toString"]) tame(proto, key);
  }

  // 5. Deep-freeze every intrinsic: everything reachable from the global
  //    object's properties, plus the prototypes that only instances reveal.
  const seen = new WeakSet();
  function deepFreeze(root) {
    const stack = [root];
    while (stack.length > 0) {
      const o = stack.pop();
      if (o === null || (typeof o !== "object" && typeof o !== "function")) continue;
      if (seen.has(o)) continue;
      seen.add(o);
      freeze(o);
      stack.push(getPrototypeOf(o));
      for (const key of ownKeys(o)) {
        const d = getOwnPropertyDescriptor(o, key);
        if (d === undefined) continue;
        if ("value" in d) {
          stack.push(d.value);
        } else {
          stack.push(d.get, d.set);
        }
      }
    }
  }
  const hidden = [
    function* () {},
    (function* () {})(),
    async function () {},
    async function* () {},
    (async function* () {})(),
    [][Symbol.iterator](),
    new Map()[Symbol.iterator](),
    new Set()[Symbol.iterator](),
    ""[Symbol.iterator](),
    "a".matchAll(/a/g),
    [].values().map(function (x) { return x; }),
    Iterator.from({ next: function () { return { done: true }; } }),
    (function () { return arguments; })(),
  ];
  for (const o of hidden) deepFreeze(o);
  // The global object itself stays open until the script has declared its
  // own globals; its current values are frozen now.
  seen.add(G);
  for (const key of ownKeys(G)) {
    const d = getOwnPropertyDescriptor(G, key);
    if ("value" in d) {
      deepFreeze(d.value);
    } else {
      deepFreeze(d.get);
      deepFreeze(d.set);
    }
    if (d.configurable) {
      if ("value" in d) d.writable = false;
      d.configurable = false;
      defineProperty(G, key, d);
    }
  }

  return function finalize(ctx) {
    deepFreeze(ctx);
    seen.delete(G);
    deepFreeze(G);
  };
})()
