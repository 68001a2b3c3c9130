! breed_client: Fortran 2008 binding of libbreed_client (clients/c/include/breed_client.h).
!
! Fields travel in C order: a field of shape (n0, n1) is the Fortran array a(n1, n0)
! (first index fastest), its rows are a's columns. Every function returns a status
! (BREED_OK = 0, BREED_STOP = 1, errors < 0); breed_errmsg gives the one-line message.
module breed_client
  use, intrinsic :: iso_c_binding
  implicit none
  private
  integer, parameter, public :: BREED_OK = 0, BREED_STOP = 1, BREED_ERR_CONFIG = -1
  integer, parameter, public :: BREED_FLOAT32 = 1, BREED_FLOAT64 = 2
  type, public :: breed_t
    type(c_ptr) :: p = c_null_ptr
  end type
  public :: breed_init, breed_request, breed_send, breed_finish, breed_abort, breed_close
  public :: breed_errmsg, breed_steps, breed_nparams, breed_param, breed_nfields
  public :: breed_field_ndim, breed_field_dim, breed_setting, breed_sim_id

  interface
    integer(c_int) function c_init(out, rank, nranks) bind(C, name="breed_init")
      import :: c_ptr, c_int
      type(c_ptr), intent(out) :: out
      integer(c_int), value :: rank, nranks
    end function
    integer(c_int) function c_request(c) bind(C, name="breed_request")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
    end function
    integer(c_int) function c_send(c, step, field, data, dtype, row_offset, rows) &
        bind(C, name="breed_send")
      import :: c_ptr, c_int, c_int32_t
      type(c_ptr), value :: c, data
      integer(c_int), value :: step, field, dtype
      integer(c_int32_t), value :: row_offset, rows
    end function
    integer(c_int) function c_finish(c) bind(C, name="breed_finish")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
    end function
    integer(c_int) function c_abort(c, reason) bind(C, name="breed_abort")
      import :: c_ptr, c_int, c_char
      type(c_ptr), value :: c
      character(kind=c_char), intent(in) :: reason(*)
    end function
    subroutine c_close(c, discard) bind(C, name="breed_close")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
      integer(c_int), value :: discard
    end subroutine
    type(c_ptr) function c_error(c) bind(C, name="breed_error")
      import :: c_ptr
      type(c_ptr), value :: c
    end function
    integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
    end function
    integer(c_int) function c_steps(c) bind(C, name="breed_steps")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
    end function
    integer(c_int) function c_nparams(c) bind(C, name="breed_nparams")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
    end function
    real(c_double) function c_param(c, i) bind(C, name="breed_param")
      import :: c_ptr, c_int, c_double
      type(c_ptr), value :: c
      integer(c_int), value :: i
    end function
    integer(c_int) function c_nfields(c) bind(C, name="breed_nfields")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
    end function
    integer(c_int) function c_field_ndim(c, k) bind(C, name="breed_field_ndim")
      import :: c_ptr, c_int
      type(c_ptr), value :: c
      integer(c_int), value :: k
    end function
    integer(c_long) function c_field_dim(c, k, axis) bind(C, name="breed_field_dim")
      import :: c_ptr, c_int, c_long
      type(c_ptr), value :: c
      integer(c_int), value :: k, axis
    end function
    integer(c_int) function c_setting(c, key, out) bind(C, name="breed_setting")
      import :: c_ptr, c_int, c_char, c_double
      type(c_ptr), value :: c
      character(kind=c_char), intent(in) :: key(*)
      real(c_double), intent(out) :: out
    end function
    integer(c_int64_t) function c_sim_id(c) bind(C, name="breed_sim_id")
      import :: c_ptr, c_int64_t
      type(c_ptr), value :: c
    end function
  end interface

contains

  integer function breed_init(cl, rank, nranks) result(rc)
    type(breed_t), intent(out) :: cl
    integer, intent(in) :: rank, nranks
    rc = c_init(cl%p, int(rank, c_int), int(nranks, c_int))
  end function

  integer function breed_request(cl) result(rc)
    type(breed_t), intent(in) :: cl
    rc = c_request(cl%p)
  end function

  ! step t of field k (0-based, as on the wire) from the contiguous array data (any rank,
  ! C order of the field = Fortran order reversed): rows [row_offset, row_offset + rows)
  integer function breed_send(cl, step, field, data, row_offset, rows) result(rc)
    type(breed_t), intent(in) :: cl
    integer, intent(in) :: step, field, row_offset, rows
    real(c_double), intent(in), target, contiguous :: data(:)
    rc = c_send(cl%p, int(step, c_int), int(field, c_int), c_loc(data), &
                int(BREED_FLOAT64, c_int), int(row_offset, c_int32_t), int(rows, c_int32_t))
  end function

  integer function breed_finish(cl) result(rc)
    type(breed_t), intent(in) :: cl
    rc = c_finish(cl%p)
  end function

  integer function breed_abort(cl, reason) result(rc)
    type(breed_t), intent(in) :: cl
    character(len=*), intent(in) :: reason
    rc = c_abort(cl%p, trim(reason) // c_null_char)
  end function

  subroutine breed_close(cl, discard)
    type(breed_t), intent(inout) :: cl
    logical, intent(in) :: discard
    call c_close(cl%p, merge(1_c_int, 0_c_int, discard))
    cl%p = c_null_ptr
  end subroutine

  function breed_errmsg(cl) result(msg)
    type(breed_t), intent(in) :: cl
    character(len=:), allocatable :: msg
    type(c_ptr) :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    s = c_error(cl%p)
    n = int(c_strlen(s))
    call c_f_pointer(s, chars, [n])
    allocate(character(len=n) :: msg)
    do i = 1, n
      msg(i:i) = chars(i)
    end do
  end function

  integer function breed_steps(cl)
    type(breed_t), intent(in) :: cl
    breed_steps = c_steps(cl%p)
  end function

  integer function breed_nparams(cl)
    type(breed_t), intent(in) :: cl
    breed_nparams = c_nparams(cl%p)
  end function

  real(c_double) function breed_param(cl, i)  ! i = 1..nparams
    type(breed_t), intent(in) :: cl
    integer, intent(in) :: i
    breed_param = c_param(cl%p, int(i - 1, c_int))
  end function

  integer function breed_nfields(cl)
    type(breed_t), intent(in) :: cl
    breed_nfields = c_nfields(cl%p)
  end function

  integer function breed_field_ndim(cl, k)  ! k = 0-based field index
    type(breed_t), intent(in) :: cl
    integer, intent(in) :: k
    breed_field_ndim = c_field_ndim(cl%p, int(k, c_int))
  end function

  integer function breed_field_dim(cl, k, axis)  ! axis = 0-based, C order
    type(breed_t), intent(in) :: cl
    integer, intent(in) :: k, axis
    breed_field_dim = int(c_field_dim(cl%p, int(k, c_int), int(axis, c_int)))
  end function

  integer function breed_setting(cl, key, value) result(rc)
    type(breed_t), intent(in) :: cl
    character(len=*), intent(in) :: key
    real(c_double), intent(out) :: value
    rc = c_setting(cl%p, trim(key) // c_null_char, value)
  end function

  integer(c_int64_t) function breed_sim_id(cl)
    type(breed_t), intent(in) :: cl
    breed_sim_id = c_sim_id(cl%p)
  end function
end module
