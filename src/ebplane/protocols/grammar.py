"""The lark grammar of the P4-16 subset (docs/p4-subset.md).

LALR(1).  The contextual lexer is what lets ``lookahead<bit<4>>()`` end in two
``>`` tokens rather than a shift.  Kept as a Python string so that it ships with
the package without package-data rules.
"""

GRAMMAR = r"""

start: _decl*

_decl: include | header_decl | struct_decl | const_decl | parser_decl

include: INCLUDE

annotation: "@" NAME ("(" [annotation_arg ("," annotation_arg)*] ")")?
?annotation_arg: STRING -> string_arg
               | keyset_elem

header_decl: annotation* "header" NAME "{" header_field* "}"
header_field: annotation* field_type NAME ";"
?field_type: bit_type
           | "varbit" "<" INT ">" -> varbit_type

struct_decl: annotation* "struct" NAME "{" struct_field* "}"
struct_field: annotation* type_ref NAME ";"

?type_ref: bit_type
         | NAME -> named_type
         | NAME "[" INT "]" -> stack_type
bit_type: "bit" "<" INT ">"

const_decl: annotation* "const" type_ref NAME "=" expr ";"

parser_decl: annotation* "parser" NAME "(" param ("," param)* ")" "{" state* "}"
param: direction? type_ref NAME
!direction: "inout" | "in" | "out"

state: annotation* "state" NAME "{" _stmt* transition "}"
_stmt: call | assign
call: path "(" [expr ("," expr)*] ")" ";"
assign: path "=" expr ";"

transition: "transition" NAME ";" -> direct
          | "transition" "select" "(" expr ("," expr)* ")" "{" case* "}" -> select
case: keyset ":" NAME ";"
?keyset: keyset_elem
       | "(" keyset_elem ("," keyset_elem)+ ")" -> tuple_keyset
?keyset_elem: expr -> ks_exact
            | expr "&&&" expr -> ks_mask
            | expr ".." expr -> ks_range
            | "default" -> ks_default
            | "_" -> ks_any

?expr: bor
?bor: bxor | bor OR bxor -> binop
?bxor: band | bxor XOR band -> binop
?band: shift | band AND shift -> binop
?shift: sum | shift SHIFT sum -> binop
?sum: prod | sum (PLUS | MINUS) prod -> binop
?prod: unary | prod MUL unary -> binop
?unary: atom
      | (MINUS | TILDE) unary -> unop
      | "(" bit_type ")" unary -> cast
?atom: INT -> number
     | path
     | "(" expr ")"
     | path "<" bit_type ">" "(" ")" -> generic_call

path: NAME ("." NAME | "[" INT "]")*

INCLUDE: /#include[ \t]*[<"][^>"\n]*[>"]/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
INT: /([0-9]+w)?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|[0-9][0-9_]*)/
STRING: /"[^"\n]*"/
OR: "|"
XOR: "^"
AND: "&"
SHIFT: "<<" | ">>"
PLUS: "+"
MINUS: "-"
MUL: "*"
TILDE: "~"

COMMENT: /\/\/[^\n]*/ | /\/\*(.|\n)*?\*\//
%import common.WS
%ignore WS
%ignore COMMENT
"""
