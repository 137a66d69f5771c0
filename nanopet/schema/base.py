"""The pieces every section of a configuration file is made of, and the one way a problem becomes a message.

- ``Section``: the base of every mapping in an options file or a search space. An unknown key (with a
  did-you-mean and the known keys) and a missing required one are reported here and nowhere else.
- ``Number``: a number with bounds, said in words in the error and as minimum/maximum in the JSON Schema.
- ``Expect``: a value described in words; any error inside it says what the whole value must be.
- ``By``: a union whose member is picked from the value (a string, a mapping, its ``type``: ``tagged``), so an
  error names the key path and not the member pydantic tried.
- ``validate``: a value checked against a type, or an ``InputError`` of one line naming the key path:
  ``input_error`` is the one conversion of a pydantic ``ValidationError`` into that line.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError, core_schema

from nanopet.errors import InputError, did_you_mean


def problem(text: str, key: str | None = None) -> PydanticCustomError:
    """A problem in words (``key``: the key below the value's path that it is about); ``input_error`` says it as is."""
    return PydanticCustomError("problem", "{text}", {"text": text, "key": key})


class Section(BaseModel):
    """A mapping of known keys: unknown ones are refused with a did-you-mean, missing required ones are named."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    noun: ClassVar[str] = "key"  # what a key of this mapping is called in an error
    refused: ClassVar[dict] = {}  # keys that are no option here -> what to say instead

    @classmethod
    def known(cls) -> list[str]:
        """The keys, as the file spells them."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def shown(cls) -> list[str]:
        """The keys listed after an unknown one."""
        return cls.known()

    @classmethod
    def key_problem(cls, key) -> str | None:
        """What is wrong with ``key`` here (unknown, with a did-you-mean; or refused, with the reason), or None."""
        if key in cls.refused:
            return cls.refused[key]
        if key in cls.known():
            return None
        return f"unknown {cls.noun}{did_you_mean(key, cls.known())}; known: {', '.join(map(str, cls.shown()))}"

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data):
        if isinstance(data, dict):
            for key in data:
                text = cls.key_problem(key)
                if text is not None:
                    raise problem(text, key)
            for name, field in cls.model_fields.items():
                if field.is_required() and (field.alias or name) not in data:
                    hint = f" ({field.description})" if field.description else ""
                    raise problem(f"missing{hint}", field.alias or name)
        return data


@dataclass(frozen=True)
class Number:
    """Annotation of an ``int`` or ``float`` field: its bounds. ``strict``: as an options file must give it, since
    its values are trained with as written (no number in a string, no 8.0 for an integer); otherwise a string
    such as ``1e-4`` (YAML 1.1 reads it as one) is read as a number and a whole float as an integer."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    strict: bool = False

    def __get_pydantic_core_schema__(self, source, handler):
        integer = source is int
        bounds = {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None}
        shown = core_schema.int_schema(**bounds) if integer else core_schema.float_schema(**bounds)
        return core_schema.no_info_plain_validator_function(functools.partial(self.check, integer),
                                                            json_schema_input_schema=shown)

    def words(self) -> str:
        """The bounds in words: ``positive``, ``>= 1``, ``between -1 and 1``, ``in [0, 1)``."""
        low, high = (self.ge, "[") if self.ge is not None else (self.gt, "("), (self.le, "]") if self.le is not None else (self.lt, ")")
        if low[0] is not None and high[0] is not None:
            if (low[1], high[1]) == ("[", "]"):
                return f"between {low[0]:g} and {high[0]:g}"
            return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        if self.gt == 0:
            return "positive"
        sign, value = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else \
            ("<=", self.le) if self.le is not None else ("<", self.lt)
        return f"{sign} {value:g}"

    def check(self, integer: bool, value):
        number = value
        if isinstance(value, str) and not self.strict:
            try:
                number = float(value)
            except ValueError:
                pass
        fine = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
        if fine and integer and isinstance(number, float):
            fine = not self.strict and number.is_integer()
            number = int(number) if fine else number
        if not fine:
            kind = ("an integer" if self.strict else "a whole number") if integer else "a number"
            raise problem(f"expected {kind}, got {value!r}")
        if ((self.ge is not None and number < self.ge) or (self.gt is not None and number <= self.gt)
                or (self.le is not None and number > self.le) or (self.lt is not None and number >= self.lt)):
            raise problem(f"must be {self.words()}, got {value!r}")
        return number


@dataclass(frozen=True)
class Expect:
    """Annotation: what the value must be, in words; any error inside it says that instead."""

    text: str

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_wrap_validator_function(self.check, handler(source))

    def check(self, value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise problem(f"must be {self.text}, got {value!r}") from None


@dataclass(frozen=True)
class By:
    """Annotation of a union: ``pick(value)`` gives ``(member type, value)``, the member validates the value, and an
    error names the key path without the member; the JSON Schema is the union's."""

    pick: Callable[[Any], tuple]

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_wrap_validator_function(self.check, handler(source))

    def check(self, value, handler):
        member, value = self.pick(value)
        return adapter(member).validate_python(value)


def tagged(*members: type[Section], default=None, bare: bool = True):
    """The type of a section told apart by its ``type`` (``default``, or ``default(value)``, when it names none).
    ``bare``: it may also be given as its type alone (``sampler: random``), or null for the defaults."""
    tags = tuple(get_args(member.model_fields["type"].annotation)[0] for member in members)

    def pick(value):
        if value is None and bare:
            return type(None), None
        value = {"type": value} if isinstance(value, str) and bare else value
        if not isinstance(value, dict):
            raise problem(f"expected a mapping {{type: {' | '.join(tags)}, ...}}, got {value!r}")
        tag = value.get("type", default(value) if callable(default) else default)
        if tag not in tags:
            adapter(dict[str, Literal[tags]]).validate_python({"type": tag})  # the error, at .type
        return members[tags.index(tag)], value

    return Annotated[Union[((Literal[tags],) if bare else ()) + members + ((type(None),) if bare else ())], By(pick)]


def unset(description: str, **field):
    """A setting that is left out when not given (so the program's own default applies): no default in the JSON Schema."""
    return Field(None, description=description, json_schema_extra=lambda schema: schema.pop("default", None), **field)


def shorthand(member: type[Section]) -> By:
    """A section that may be given as its type alone (``strategy: staged``), or null for its defaults."""
    return By(lambda value: (type(None), None) if value is None else (member, {"type": value} if isinstance(value, str) else value))


@functools.lru_cache(maxsize=None)
def adapter(kind) -> TypeAdapter:
    return TypeAdapter(kind)


def validate(kind, data, where: str = ""):
    """``data`` (parsed YAML) checked against ``kind`` (a Section or any type): the validated value, or an
    ``InputError`` naming the key path below ``where``."""
    try:
        return adapter(kind).validate_python(data)
    except ValidationError as error:
        raise input_error(error, where) from None


# pydantic's own error types, in the words of the other messages
EXPECTED = {"int_type": "an integer", "int_parsing": "a whole number", "int_from_float": "a whole number",
            "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
            "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
            "list_type": "a list", "tuple_type": "a list"}


def input_error(error: ValidationError, where: str = "") -> InputError:
    """The first problem of ``error`` as one line: ``key.path: what is wrong, got what``."""
    detail = error.errors(include_url=False)[0]
    kind, context, value = detail["type"], detail.get("ctx") or {}, detail.get("input")
    loc = [part for part in detail["loc"] if part != "[key]"]
    if kind == "problem":
        text = context["text"]
        loc += [context["key"]] if context.get("key") is not None else []
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", context["expected"])
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        text = f"must be {context['expected'].replace(chr(39), '')}, got {value!r}{hint}"
    elif kind in EXPECTED:
        text = f"expected {EXPECTED[kind]}, got {value!r}"
    elif kind == "too_short":
        text = "empty; give at least one" if not context.get("actual_length") else \
            f"has {context['actual_length']}; give at least {context['min_length']}"
    else:
        text = detail["msg"].removeprefix("Value error, ")
    path = where
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
    return InputError(f"{path}: {text}" if path else text)
